"""Stage 4's repair loop as one library function, :func:`run`: C learns in M's dream, M learns from C's mistakes.

Iteration 0 dreams in stage 3's M (kept as ``CHECKPOINT_DIR/dream_loop/memory_from_stage3.pth``) with stage 2's V,
starting from the recording in DATA_DIR (hard-linked into ``DATA_DIR/dream_loop``, where the loop's data grows).
Every iteration then runs these stages, each resumable on its own:

1. ``memory`` — iterations after 0: M continues from the previous iteration's M on all data so far for
   ``loop.memory_epochs`` (dropout and value head as stage 3's M).
2. ``controller`` — CMA-ES in M's dream only (:func:`car_racing.training.cmaes_run.one_pass`), from zero
   (``cmaes.sigma0``), from the last kept C carried onto the new M (``loop.sigma0_warm``), or both
   (``loop.controller_start``; the better real check is kept). Real checks only choose what is kept.
3. ``fidelity`` (``loop.fidelity_panel`` > 0) — the dream-real rank correlation of a panel of controllers.
4. ``record`` — the kept C and the dream's choice (CMA's final mean) drive ``loop.agent_episodes`` new tracks
   with exploration noise, appended to the data: C's mistakes become M's lessons.
5. ``repair`` (``loop.repair_episodes`` > 0) — the dream's choice's dreams replayed in the real env from the
   states they started from (:mod:`car_racing.training.repair`): M sees what really follows what its dream paid.
6. ``checks`` (``loop.check_episodes`` > 0) — the iteration's worst real checks replayed as data.

The loop state ``CHECKPOINT_DIR/dream_loop/dream_loop_state.json`` lists the finished stages; ``--resume``
continues an interrupted loop. At the end the best-checked iterations drive the selection tracks
(``loop.select_top``) and the winner's M and C become CHECKPOINT_DIR's. Rules kept (checkable from C's checkpoint):
C never sees an expert's action and no real-env return is its fitness.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from car_racing.common.cli import UsageError
from car_racing.common.config import Config, as_dict, replace, resolved_path, workers_of, write_resolved
from car_racing.common.metrics import MetricsLog
from car_racing.common.plain_data import resume_path
from car_racing.common.runtime import (
    MEMORY_LATEST_FILE,
    checkpoint_paths,
    link_or_copy,
    load_checkpoint,
    save_checkpoint,
)
from car_racing.episodes.backends import backend_of
from car_racing.recording.recorded_data import has_recorded_data, load_recorded, recorded_run, recorded_seeds
from car_racing.training.loop_state import (
    DREAM_CHOICE_DIR,
    PLOT_FILE,
    SELECT_SEED_BASE,
    STATE_FILE,
    LoopState,
    Stage,
    checked_iterations,
    choose_best,
    converged,
    counted_best,
    iteration_dir,
    loop_record,
    plot_loop,
    report_iteration,
    run_summary,
    save_dream_choice,
    stage_keys,
)

LOOP_DIR = "dream_loop"  # the loop's folder inside CHECKPOINT_DIR and DATA_DIR
STAGE3_MEMORY_FILE = "memory_from_stage3.pth"  # stage 3's M, kept in the loop's folder: iteration 0 dreams in it
AGENT_SEED_BASE = 5_000_000  # iteration i records C's episodes on seeds BASE + 1000·i + j (see agent_seed_base)
START_DIRS = {"warm": "warm", "zero": "from_zero"}  # loop.controller_start both: each run's folder in iter_NN/
FIXED_SETTINGS = ("run.seed", "run.data_dir")  # settings a continued loop must keep


@dataclass(frozen=True)
class Loop:
    """One loop's config and places: its folders, stage 3's M and the C it starts from."""

    config: Config  # the user's config (CHECKPOINT_DIR and DATA_DIR are stage 4's)
    memory_dropout: float  # M's training settings in later iterations: stage 3's M's own
    memory_value_discount: float
    memory_latents: str  # "sample" or "mean" (--memory.latents)
    controller_from: Optional[Path]  # iteration 0's C (--cmaes.init checkpoint), else None: from zero

    @property
    def dir(self) -> Path:
        return Path(self.config.run.checkpoint_dir) / LOOP_DIR

    @property
    def data_dir(self) -> Path:
        return Path(self.config.run.data_dir) / LOOP_DIR

    @property
    def stage3_memory(self) -> Path:
        return self.dir / STAGE3_MEMORY_FILE

    @property
    def iterations(self) -> int:
        return self.config.loop.iterations


def find_loop_dir(run: str | Path, flag: str = "--runs") -> Path:
    """The ``dream_loop`` folder of a run folder (``RUN/checkpoints/dream_loop``), of a stage-4 checkpoint folder
    (``CHECKPOINT_DIR/dream_loop``) or the loop folder itself: the first that holds the loop state. The bench tools
    that read a loop take any of the three; a one-line error names ``flag`` when none does."""
    run = Path(run)
    for candidate in (run / "checkpoints" / LOOP_DIR, run / LOOP_DIR, run):
        if (candidate / STATE_FILE).is_file():
            return candidate
    raise UsageError(f"{flag} {run}: no {LOOP_DIR}/{STATE_FILE} there (expected a run folder with "
                     f"checkpoints/{LOOP_DIR}, a stage-4 --checkpoint-dir or its {LOOP_DIR} folder)")


# --- the stages -----------------------------------------------------------------------------------------------


def stage_data(loop: Loop, iteration: int) -> dict:
    """The recording of DATA_DIR, hard-linked into the loop's data folder (which then grows)."""
    from car_racing.recording.latent_cache import LATENTS_FILE
    from car_racing.recording.recorded_data import (
        ARRAY_FILES,
        META_FILE,
        SEQ_ACTIONS_FILE,
        SEQ_DONES_FILE,
        SEQ_INDICES_FILE,
        SEQ_REWARDS_FILE,
    )

    source = Path(loop.config.run.data_dir)
    names = [f for f, *_ in ARRAY_FILES.values()] + [SEQ_INDICES_FILE, SEQ_ACTIONS_FILE, SEQ_REWARDS_FILE,
                                                      SEQ_DONES_FILE, LATENTS_FILE, META_FILE]  # meta last
    for name in names:
        if (source / name).is_file():
            link_or_copy(source / name, loop.data_dir / name)
    data = load_recorded(loop.data_dir, mmap=True)
    return {"episodes": len(data.episodes), "frames": len(data), "agent_seed_base": agent_seed_base(loop)}


def agent_seed_base(loop: Loop) -> int:
    """First seed of C's recorded episodes: AGENT_SEED_BASE, or past every seed of the initial data (a loop
    started from another loop's recording must not take that loop's episodes for its own). Fixed when the loop
    starts (kept in its state), so a recording that grows later does not move it."""
    state_path = loop.dir / STATE_FILE
    if state_path.is_file():
        saved = json.loads(state_path.read_text())["stages"].get("0:data", {}).get("agent_seed_base")
        if saved is not None:
            return int(saved)
    seeds = [int(e["seed"]) for e in load_recorded(loop.config.run.data_dir, mmap=True).episodes]
    return max(AGENT_SEED_BASE, 1000 * (max(seeds) // 1000 + 1)) if seeds else AGENT_SEED_BASE


def record_missing(loop: Loop, seeds: list[int], noise: float, checkpoint_dir: Path) -> None:
    """The C in ``checkpoint_dir`` drives the given seeds not recorded yet (contiguous runs, appended), and whatever
    an interrupted run left pending is merged: a rerun records only what is missing and never twice."""
    from car_racing.episodes.recording import record
    from car_racing.recording.recorded_data import merge_pending, recording_seq_len

    done = recorded_seeds(loop.data_dir)
    runs: list[list[int]] = []
    for seed in sorted(seed for seed in seeds if seed not in done):
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    seq_len = recording_seq_len(loop.data_dir)  # appended episodes keep the recording's window length
    for run in runs:
        record(replace(loop.config, run__seed=run[0], run__data_dir=str(loop.data_dir),
                       run__checkpoint_dir=str(checkpoint_dir), record__driver="agent", record__episodes=len(run),
                       record__random_episodes=0, record__steps=loop.config.checks.max_steps, record__noise=noise,
                       record__rescue=loop.config.loop.agent_rescue,
                       record__seq_len=seq_len, record__append=True))
    merge_pending(loop.data_dir)  # all were pending: merge them now


def stage_vision(loop: Loop, iteration: int) -> dict:
    """Stage 2's V, linked into the loop's folder (V is trained on frames only; the loop never retrains it)."""
    source = checkpoint_paths(loop.config.run.checkpoint_dir)["vision"]
    load_checkpoint(source, "vision")
    link_or_copy(source, checkpoint_paths(loop.dir)["vision"])
    return {"from": str(source)}


def stage_memory(loop: Loop, iteration: int) -> dict:
    """Iteration 0: stage 3's M as it is; later: M continues from the previous iteration's M on all data so far."""
    from car_racing.training.memory import train_memory

    folder = iteration_dir(loop.dir, iteration)
    link_or_copy(checkpoint_paths(loop.dir)["vision"], checkpoint_paths(folder)["vision"])
    if iteration == 0:
        source = load_checkpoint(loop.stage3_memory, "memory")
        link_or_copy(loop.stage3_memory, checkpoint_paths(folder)["memory"])
        history, epoch = source.get("history", {}), int(source.get("epoch", 0))
        return {"epochs": 0, "from": str(loop.stage3_memory),
                **{f"val_{k}": history[f"val_{k}"][epoch - 1] for k in ("mdn", "reward", "done")
                   if epoch and f"val_{k}" in history}}
    previous = checkpoint_paths(iteration_dir(loop.dir, iteration - 1))["memory"]
    config = loop.config
    best = train_memory(replace(
        config, run__data_dir=str(loop.data_dir), run__checkpoint_dir=str(folder), run__seed=config.run.seed + iteration,
        run__resume=(folder / MEMORY_LATEST_FILE).is_file(), memory__epochs=max(config.loop.memory_epochs, 1),
        memory__init_from=str(previous), memory__vision_checkpoint="", memory__dropout=loop.memory_dropout,
        memory__value_discount=loop.memory_value_discount, memory__latents=loop.memory_latents,
        memory__freeze_lstm=config.loop.memory_heads_only))
    history, epoch = best["history"], int(best["epoch"])
    return {"epochs": config.loop.memory_epochs, "best_epoch": epoch, "val_mdn": history["val_mdn"][epoch - 1],
            "val_reward": history["val_reward"][epoch - 1], "val_done": history["val_done"][epoch - 1],
            "frames": best.get("data", {}).get("num_frames")}


def warm_dreams(config: Config) -> dict:
    """The dream of a warm-started run under ``loop.warm_dreams`` START:STEPS (as many dreams as keep the dreamt
    steps of ``dream.steps`` × ``dream.trials``, scored by their mean), as config overrides."""
    from car_racing.training.dream import WARM_DREAM_STARTS, dream_start_settings, parse_dream_setting

    start, steps = parse_dream_setting(config.loop.warm_dreams, "--loop.warm-dreams", WARM_DREAM_STARTS)
    settings = dream_start_settings(start)  # dream_start, dream_start_drivers
    return {"dream__steps": steps, "dream__trials": max(1, config.dream.steps * config.dream.trials // steps),
            "dream__start": settings["dream_start"], "dream__start_drivers": tuple(settings["dream_start_drivers"]),
            "dream__fitness": "mean"}


def evolve_in_dream(loop: Loop, iteration: int, folder: Path, start_from: Optional[Path],
                    start_memory: Optional[Path] = None) -> dict:
    """One CMA-ES run in this iteration's dream (V and M in ``folder``): from ``start_from``'s C with
    ``loop.sigma0_warm`` (carried from ``start_memory``, the M it was evolved on, onto this M unless
    ``cmaes.carry`` is off; dreams and generations as ``loop.warm_dreams`` and ``loop.warm_generations`` say), or
    from zero with ``cmaes.sigma0``; resumes its own saved run. Returns its final checkpoint."""
    from car_racing.training.cmaes_run import one_pass

    config = loop.config
    warm = start_from is not None
    dreams = warm_dreams(config) if warm and config.loop.warm_dreams else {"dream__start_drivers": ()}
    if dreams["dream__start_drivers"]:
        drivers = {e["driver"] for e in load_recorded(loop.data_dir, mmap=True).episodes}
        if not drivers & set(dreams["dream__start_drivers"]):  # nothing of C's own yet: dreams from any recording
            dreams["dream__start_drivers"] = ()
    generations = config.loop.warm_generations if warm and config.loop.warm_generations else config.cmaes.generations
    return one_pass(replace(
        config, loop__iterations=1, cmaes__mode="dream", cmaes__generations=generations,
        cmaes__sigma0=config.loop.sigma0_warm if warm else config.cmaes.sigma0,
        cmaes__init="checkpoint" if warm else "zero", cmaes__init_from=str(start_from) if warm else "",
        cmaes__init_memory=str(start_memory) if start_memory else "", **dreams,
        run__data_dir=str(loop.data_dir), run__checkpoint_dir=str(folder), run__seed=config.run.seed + 1000 * iteration,
        run__resume=resume_path(checkpoint_paths(folder)["controller"]).is_file()))


def stage_controller(loop: Loop, iteration: int) -> dict:
    """C by CMA-ES in this iteration's dream: from the previous iteration's kept C, from zero, or both (the
    better on the real checks is kept, linked into iter_NN/; each run resumes on its own after an interruption)."""
    folder = iteration_dir(loop.dir, iteration)
    previous = checkpoint_paths(iteration_dir(loop.dir, iteration - 1))["controller"] if iteration else loop.controller_from
    # the M the previous C was evolved on (iteration 0: the one --cmaes.init-from's checkpoint names)
    previous_memory = checkpoint_paths(iteration_dir(loop.dir, iteration - 1))["memory"] if iteration else None
    controller_start = loop.config.loop.controller_start
    if controller_start != "both" or previous is None:
        start = "zero" if previous is None or controller_start == "zero" else "warm"
        final = evolve_in_dream(loop, iteration, folder, previous if start == "warm" else None, previous_memory)
        save_dream_choice(final, folder)
        return {**run_summary(final), "start": start}
    finals, summaries = {}, {}
    for start, name in START_DIRS.items():
        sub = folder / name
        for kind in ("vision", "memory"):
            link_or_copy(checkpoint_paths(folder)[kind], checkpoint_paths(sub)[kind])
        finals[start] = evolve_in_dream(loop, iteration, sub, previous if start == "warm" else None, previous_memory)
        summaries[start] = run_summary(finals[start])
    scores = {start: (-math.inf if s["best_real_score"] is None else s["best_real_score"]) for start, s in summaries.items()}
    winner = "zero" if scores["zero"] > scores["warm"] else "warm"
    sub = folder / START_DIRS[winner]
    for name in (checkpoint_paths(sub)["controller"].name, "control_model_cmaes.png"):
        if (sub / name).is_file():
            link_or_copy(sub / name, folder / name)
    save_dream_choice(finals[winner], folder)
    return {**summaries[winner], "start": winner, "starts": summaries}


def stage_fidelity(loop: Loop, iteration: int) -> dict:
    """The dream-real rank correlation of this iteration's V and M (a panel incl. this and earlier Cs); with
    ``loop.panel_as_data`` the panel's new real episodes join the data for the next M."""
    from car_racing.training.fidelity import dream_of, measure_fidelity, trained_controller_checkpoint

    config = loop.config
    folder = iteration_dir(loop.dir, iteration)
    earlier = [str(checkpoint_paths(iteration_dir(loop.dir, i))["controller"]) for i in range(iteration)]
    record = config.loop.panel_as_data and iteration < loop.iterations - 1
    # the dream this iteration's C was trained in, as the fidelity tool reads it from C's checkpoint (≥ 32 dreams)
    dream = dream_of(trained_controller_checkpoint(folder, earlier[-2:]), {})
    summary = measure_fidelity(
        folder, loop.data_dir, dream, panel=config.loop.fidelity_panel, episodes=config.loop.fidelity_episodes,
        controllers=earlier[-2:], out=folder / "fidelity.png", json_out=folder / "fidelity.json",
        max_steps=config.checks.max_steps, seed=config.run.seed, workers=workers_of(config.run),
        backend=backend_of(config.run), device=config.run.device, progress=config.run.progress,
        record_into=str(loop.data_dir) if record else "", record_run=iteration)
    return {"rank_correlation": summary["rank_correlation"], "controllers": summary["controllers"],
            "errors": summary["errors"], "recorded_now": sum(r["recorded"] for r in summary["rows"]),
            "panel_episodes": sum(len(r["episodes"]) for r in summary["rows"]) if record else 0}


def stage_record(loop: Loop, iteration: int) -> dict:
    """C (with exploration noise) drives new tracks; the episodes join the data."""
    settings = loop.config.loop
    if settings.agent_episodes == 0:
        return {"episodes": 0}
    first = agent_seed_base(loop) + 1000 * iteration
    choice = int(round(settings.record_dream_choice * settings.agent_episodes))  # seeds first … first+choice−1
    folder = iteration_dir(loop.dir, iteration)
    for seeds, source in ((range(first, first + choice), folder / DREAM_CHOICE_DIR),
                          (range(first + choice, first + settings.agent_episodes), folder)):
        record_missing(loop, list(seeds), settings.agent_noise, source)
    seeds = set(range(first, first + settings.agent_episodes))
    episodes = {int(e["seed"]): e for e in load_recorded(loop.data_dir, mmap=True).episodes if int(e["seed"]) in seeds}
    returns = [float(episodes[s]["total_reward"]) for s in sorted(episodes)]
    result = {"episodes": len(episodes), "return_mean": float(np.mean(returns)), "return_min": float(np.min(returns))}
    if settings.agent_rescue:  # how often the autopilot brought C back to the road (loop.agent_rescue)
        for key in ("rescues", "rescue_steps"):
            result[key] = int(sum(e["noise"].get(key, 0) for e in episodes.values()))
    if choice:
        result["return_mean_dream_choice"] = float(np.mean(returns[:choice]))
    return result


def stage_repair(loop: Loop, iteration: int) -> dict:
    """The dream's choice's dreams, replayed in the real env from the states they started from, join the data."""
    from car_racing.common.runtime import load_model, resolve_device
    from car_racing.recording.latent_cache import load_or_build_latents
    from car_racing.training.repair import REPAIR_DRIVER, repair_iteration

    config = loop.config
    folder = iteration_dir(loop.dir, iteration)
    mdnrnn, memory = load_model(checkpoint_paths(folder)["memory"], "memory")
    controller, _ = load_model(checkpoint_paths(folder / DREAM_CHOICE_DIR)["controller"], "controller")
    mu, _ = load_or_build_latents(loop.data_dir, checkpoint_paths(folder)["vision"], resolve_device(config.run.device),
                                  progress=config.run.progress)
    scale = float(memory.get("reward", {}).get("scale", 1.0))
    result = repair_iteration(loop.data_dir, mdnrnn, mu, controller.get_flat_params(), iteration,
                              config.loop.repair_episodes, seed=config.run.seed, rollout_steps=config.dream.steps,
                              temperature=config.dream.temperature, dropout=config.dream.dropout,
                              reward_scale=1.0 / scale, from_start=config.dream.start == "episode-start",
                              progress=config.run.progress)
    episodes = recorded_run(loop.data_dir, REPAIR_DRIVER, "repair_iteration", iteration)
    dream = [float(e["noise"]["dream_return"]) for e in episodes]
    real = [float(e["total_reward"]) for e in episodes]
    return {"episodes": len(episodes), "recorded_now": result["recorded_now"],
            "dream_return_mean": float(np.mean(dream)) if dream else None,
            "real_return_mean": float(np.mean(real)) if real else None, "rows": result["rows"]}


def stage_checks(loop: Loop, iteration: int) -> dict:
    """This iteration's real checks, replayed into the data: real failures of the Cs the dream paid most."""
    from car_racing.training.check_replays import CHECK_DRIVER, plan_check_replays, record_check_replays

    folder = iteration_dir(loop.dir, iteration)
    # with loop.controller_start both, each run's own checkpoint (iter_NN/'s C is a link to the winner's)
    runs = {start: folder / name for start, name in START_DIRS.items()
            if checkpoint_paths(folder / name)["controller"].is_file()} or {"kept": folder}
    checked = {start: load_checkpoint(checkpoint_paths(path)["controller"], "controller").get("checked") or []
               for start, path in runs.items()}
    plan = plan_check_replays(checked, loop.config.loop.check_episodes)
    result = record_check_replays(loop.data_dir, plan, iteration, progress=loop.config.run.progress)
    episodes = recorded_run(loop.data_dir, CHECK_DRIVER, "check_iteration", iteration)
    checks = np.array([float(e["noise"]["check_return"]) for e in episodes])
    replays = np.array([float(e["total_reward"]) for e in episodes])
    return {"episodes": len(episodes), "recorded_now": result["recorded_now"],
            "checks_available": sum(len(c) for c in checked.values()),
            "check_return_mean": float(checks.mean()) if len(checks) else None,
            "replay_return_mean": float(replays.mean()) if len(replays) else None,
            "replays_differing": int(np.sum(np.abs(checks - replays) > 0.01)),
            "rows": result["rows"]}


def select_iterations(loop: Loop, state: LoopState) -> dict[int, list[float]]:
    """The final choice (``loop.select_top``): the iterations whose kept C checked best drive the selection
    tracks, each with its own V, M and C, and so does the iteration the stopping rule counts as best when it is
    not among them. Returns their returns by iteration; each candidate's are saved in the loop state as soon as it
    has driven (a rerun, also one with more iterations, drives only the missing ones)."""
    from car_racing.episodes.agent import evaluate_agent

    config = loop.config
    ranked = checked_iterations(state, loop.iterations)
    checked = ranked[:config.loop.select_top]
    rule_best = counted_best(state, loop.iterations - 1, config.loop.patience_delta)
    if rule_best is not None and rule_best not in [i for _, i in checked]:
        checked += [(score, i) for score, i in ranked if i == rule_best]
    seeds = [SELECT_SEED_BASE + j for j in range(config.loop.select_episodes)]
    saved = state.data.get("selection", {})
    if saved.get("seeds") != seeds or saved.get("max_steps") != config.checks.max_steps:
        saved = {"seeds": seeds, "max_steps": config.checks.max_steps, "returns": {}, "steps": {}}
    state.data["selection"] = saved
    for score, iteration in checked:
        if str(iteration) not in saved["returns"]:
            print(f"final choice: iteration {iteration}'s C (check {score:.1f}) drives {len(seeds)} selection tracks")
            results = evaluate_agent(iteration_dir(loop.dir, iteration), seeds, max_steps=config.checks.max_steps,
                                     workers=workers_of(config.run), backend=backend_of(config.run))
            saved["returns"][str(iteration)] = [float(r.total_reward) for r in results]
            saved.setdefault("steps", {})[str(iteration)] = [r.steps for r in results]
            state.save()
    return {iteration: saved["returns"][str(iteration)] for _, iteration in checked}


STAGES = [Stage("data", stage_data, True), Stage("vision", stage_vision, True), Stage("memory", stage_memory),
          Stage("controller", stage_controller), Stage("fidelity", stage_fidelity),
          Stage("record", stage_record, feeds_next=True), Stage("repair", stage_repair, feeds_next=True),
          Stage("checks", stage_checks, feeds_next=True)]
OPTIONAL_STAGES = {"fidelity": "fidelity_panel", "repair": "repair_episodes", "checks": "check_episodes"}  # run when > 0


# --- the loop -------------------------------------------------------------------------------------------------


def start(config: Config) -> Loop:
    """The loop in CHECKPOINT_DIR/dream_loop: a new one (stage 2's V and stage 3's M must be there; stage 3's M is
    kept in the loop's folder) or, with ``run.resume``, the one there. One-line errors for what is missing."""
    paths = checkpoint_paths(config.run.checkpoint_dir)
    loop_dir = Path(config.run.checkpoint_dir) / LOOP_DIR
    stage3_memory = loop_dir / STAGE3_MEMORY_FILE
    if (loop_dir / STATE_FILE).is_file():
        if not config.run.resume:
            raise UsageError(f"{loop_dir}: holds a repair loop already: --resume continues it; to start over, remove "
                             f"it and {Path(config.run.data_dir) / LOOP_DIR}")
        memory, memory_file = load_checkpoint(stage3_memory, "memory"), stage3_memory
    else:
        for kind, stage in (("vision", "train_vision.py (stage 2)"), ("memory", "train_memory.py (stage 3)")):
            if not paths[kind].is_file():
                raise UsageError(f"{paths[kind]}: missing; run {stage} first")
        if not has_recorded_data(config.run.data_dir):
            raise UsageError(f"--data-dir {config.run.data_dir}: holds no recording (car_racing/recorded_frames.py)")
        memory, memory_file = load_checkpoint(paths["memory"], "memory"), paths["memory"]  # (one line if not an M)
    value_discount = float((memory.get("value") or {}).get("discount", 0.0))
    if config.dream.value and not value_discount > 0:
        raise UsageError(f"--dream.value: {memory_file} has no value head (stage 3: --memory.value-discount γ > 0), "
                         f"or pass --no-dream.value")
    controller_from = None
    if config.cmaes.init == "checkpoint":
        controller_from = Path(config.cmaes.init_from) if config.cmaes.init_from else paths["controller"]
        if not controller_from.is_file():
            raise UsageError(f"--cmaes.init-from {controller_from}: no such controller checkpoint")
    if not (loop_dir / STATE_FILE).is_file():  # a new loop: stage 3's M is kept in its folder (iteration 0 dreams in it)
        link_or_copy(paths["memory"], stage3_memory)
    return Loop(config, float(memory.get("dropout", 0.0)), value_discount, str(memory.get("latents", "sample")),
                controller_from)


def plan(config: Config) -> str:
    """What the loop will do, said before it starts (a quick try should know it runs a loop, not one pass)."""
    settings, cmaes, checks = config.loop, config.cmaes, config.checks
    starts = {"both": "from zero (after iteration 0 also warm: 2 runs)", "zero": "from zero",
              "warm": "warm from the last C (iteration 0 from zero)"}
    extra = [f"{settings.agent_episodes} episodes of C recorded"] if settings.agent_episodes else []
    extra += [f"{settings.repair_episodes} repair replays"] if settings.repair_episodes else []
    choice = (f"then the final choice: the top {settings.select_top} drive {settings.select_episodes} more tracks"
              if settings.select_top else "then the best check is kept")
    return (f"stage 4: the repair loop, {settings.iterations} iterations (--loop.iterations 1: one CMA-ES pass); each: "
            f"CMA-ES {starts[settings.controller_start]} in M's dream, {cmaes.generations} generations × "
            f"{cmaes.population} candidates × {config.dream.trials} dreams of {config.dream.steps} steps, real checks "
            f"of CMA's mean{' and the best candidate' if checks.best_candidate else ''} every {checks.every} on "
            f"{checks.episodes} tracks of {checks.max_steps} steps; "
            f"{', '.join(extra) or 'no new data'} and M {settings.memory_epochs} more epochs; {choice}")


def run(config: Config) -> dict:
    """Stage 4's repair loop: run (or continue) it, then the final choice's M and C become CHECKPOINT_DIR's.
    Returns C's final checkpoint."""
    loop = start(config)
    write_resolved(config, resolved_path(config.run.checkpoint_dir, "controller"))
    print(plan(config), flush=True)
    state = iterate(loop)  # the loop state's data
    best = state.get("best_iteration")
    if best is None:
        raise UsageError(f"{loop.dir}: no iteration's C was checked in the real env; nothing to keep")
    paths = checkpoint_paths(config.run.checkpoint_dir)
    best_dir = loop.dir / "best"
    link_or_copy(checkpoint_paths(best_dir)["memory"], paths["memory"])  # atomic: the old file or the new one
    # C, with what the whole loop used to choose it in its training record (the runs' checks, the final choice)
    chosen = load_checkpoint(checkpoint_paths(best_dir)["controller"], "controller")
    # the state as saved, read back: the record is then the same bytes whether the loop ran now or was resumed
    saved = json.loads((loop.dir / STATE_FILE).read_text())
    chosen["training"] = {**chosen["training"], "loop": loop_record(saved, loop.iterations)}
    save_checkpoint(chosen, paths["controller"])
    plot = iteration_dir(loop.dir, best) / "control_model_cmaes.png"
    if plot.is_file():
        link_or_copy(plot, Path(config.run.checkpoint_dir) / plot.name)
    final = load_checkpoint(paths["controller"], "controller")
    returns = state.get("selection", {}).get("returns", {}).get(str(best))
    why = (f"checked best ({final['best_real_score']:.1f} on {config.checks.episodes} tracks)" if returns is None else
           f"won the final choice ({sum(returns) / len(returns):.1f} over {len(returns)} selection tracks; "
           f"{final['best_real_score']:.1f} on its {config.checks.episodes} check tracks)")
    print(f"stage 4: iteration {best} of the repair loop {why}; its M and C are now {paths['memory']} and "
          f"{paths['controller']} (stage 3's M: {loop.stage3_memory}; the loop's curves: {loop.dir / PLOT_FILE})")
    return final


def iterate(loop: Loop) -> dict:
    """The iterations, stage by stage (each skipped when the loop state says it is done), the stopping rule and the
    final choice; returns the loop state."""
    import torch

    config = loop.config
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    threads = torch.get_num_threads()
    loop.dir.mkdir(parents=True, exist_ok=True)
    state = LoopState(loop.dir / STATE_FILE, as_dict(config), FIXED_SETTINGS)
    state.save()
    patience, delta = config.loop.patience, config.loop.patience_delta
    metrics = MetricsLog(loop.dir, "dream_loop", tensorboard=config.run.tensorboard,
                         keep=lambda record: state.done(f"{record.get('step')}:{record.get('stage')}"))
    keys = stage_keys([s for s in STAGES if getattr(config.loop, OPTIONAL_STAGES.get(s.name, "iterations"))],
                      loop.iterations)
    say = tqdm.write if config.run.progress else print
    bar = tqdm(keys, desc="dream loop", unit="stage", disable=not config.run.progress,
               initial=sum(state.done(f"{i}:{s.name}") for i, s in keys), total=len(keys))
    for iteration, stage in keys:
        if iteration > 0 and converged(state, iteration - 1, patience, delta) is not None:
            break  # converged: no further iteration
        if stage.feeds_next and converged(state, iteration, patience, delta) is not None:
            continue  # no next M to record for
        key = f"{iteration}:{stage.name}"
        if state.done(key) or (stage.name in ("repair", "checks") and state.done(f"{iteration + 1}:memory")):
            continue  # (a stage switched on later starts with the first iteration whose data can still grow)
        bar.set_description(f"dream loop: iteration {iteration}, {stage.name}")
        say(f"\n=== dream loop: iteration {iteration}/{loop.iterations - 1}, {stage.name} ===")
        torch.set_num_threads(threads)  # a stage's thread choice must not leak into the next
        started = time.time()
        result = stage.run(loop, iteration)
        metrics.log(iteration, {f"{stage.name}/{k}": v for k, v in result.items()}, stage=stage.name,
                    seconds=time.time() - started)
        state.finish(key, time.time() - started, result)
        bar.update(1)
        if stage.name in ("fidelity", "record", "repair", "checks") or (stage.name == "controller"
                                                                        and config.loop.fidelity_panel == 0):
            say(report_iteration(state, iteration))
            plot_loop(state, loop.dir / PLOT_FILE, loop.iterations)
    bar.close()
    metrics.close()
    ran = [i for i in range(loop.iterations) if state.done(f"{i}:controller")]
    stopped = converged(state, ran[-1], patience, delta) if ran else None
    state.data["stopped_early"] = (None if stopped is None or len(ran) == loop.iterations else
                                   {"after_iteration": ran[-1], "best_checked_iteration": stopped,
                                    "patience": patience, "patience_delta": delta})
    plot_loop(state, loop.dir / PLOT_FILE, loop.iterations)
    selection = select_iterations(loop, state) if config.loop.select_top else None
    best = choose_best(loop.dir, loop.iterations, state,
                       None if selection is None else {i: float(np.mean(r)) for i, r in selection.items()})
    state.data["best_iteration"] = best
    state.data["best_by"] = "checks" if not selection else f"mean over {config.loop.select_episodes} selection tracks"
    state.save()
    print(f"\ndream loop: {len(ran)} iterations in {state.total_seconds() / 60:.1f} min of stage time")
    if state.data["stopped_early"]:
        print(f"converged: stopped after iteration {ran[-1]}; no check beat iteration {stopped}'s by more than "
              f"{delta:g} in the {patience} iterations after it (--loop.patience {patience})")
    for iteration in ran:
        print(report_iteration(state, iteration))
    for iteration, returns in (selection or {}).items():
        print(f"final choice: iteration {iteration}: check {state.result(f'{iteration}:controller')['best_real_score']:.1f}, "
              f"selection {np.mean(returns):.1f} ± {np.std(returns):.1f} (min {np.min(returns):.1f}) "
              f"over {len(returns)} tracks")
    if best is not None:
        print(f"best iteration by the {state.data['best_by']}: {best} (kept C checked "
              f"{state.result(f'{best}:controller')['best_real_score']:.1f}); V, M, C linked into {loop.dir / 'best'}")
    return state.data
