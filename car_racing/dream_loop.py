"""The whole World Models loop in one command: C learns in M's dream, M learns from C's mistakes.

    python car_racing/dream_loop.py                       # settings: Args below (one place)
    python car_racing/dream_loop.py --iterations 8        # run again (or after Ctrl-C / a crash): it resumes

Iteration 0 starts the data and the models; every iteration then runs four stages, each the stage
script's own ``main`` (each stays runnable on its own; the exact calls are in the loop state):

0. ``data``   — record ``--init-episodes`` noisy autopilot episodes (plus ``--random-episodes`` of the random
   driver) into ``--data-dir``, or hard-link an existing recording (``--init-data-dir``); ``vision`` —
   train V on it, or take an existing V (``--vision-from``; V is trained on frames only).
1. ``memory`` — train M on all data so far: iteration 0 from scratch (or from ``--memory-from``) for
   ``--memory-epochs-first`` epochs, later iterations continue from the previous M for ``--memory-epochs``.
2. ``controller`` — CMA-ES in M's dream only (``train_controller_cmaes.py --mode dream``), warm-started
   from the previous iteration's kept C (iteration 0: all zeros), real-checked every ``--eval-every``
   generations: the checks only choose which parameters are kept. ``--controller-start zero`` starts every
   iteration from zero instead; ``both`` runs both (``iter_NN/warm/``, ``iter_NN/from_zero/``) and keeps the
   one with the better check (same tracks) as the iteration's C. ``--dream-fitness`` makes the dream's
   fitness pessimistic over each candidate's dreams (a lower quantile or mean − k·std).
3. ``fidelity`` — ``evaluate_world_model.py`` on this iteration's V, M and C: the dream-real rank
   correlation of a panel of controllers (``--fidelity-panel``, 0 = skip); with ``--panel-as-data`` the panel's
   real episodes join the data (driver ``panel``).
4. ``record`` — C drives ``--agent-episodes`` new tracks with exploration noise, appended to the data (C's
   mistakes become M's lessons in the next iteration): a ``--record-dream-choice`` share of them by CMA's
   final mean (``iter_NN/dream_choice/``: the C the dream prefers — when the dream is exploited, the very
   C that shows M its error), the rest by the kept, real-checked C.
5. ``repair`` (``--repair-episodes`` > 0; :mod:`car_racing.training.repair`) — the dream's choice dreams from
   real recorded states; each dream's actions are replayed in the real env from the very state the dream
   started from (the recorded episode's seed and actions up to the start, then the dream's actions) and
   the real episodes join the data: M sees what really follows the actions its dream paid for.
6. ``checks`` (``--check-episodes`` > 0; :mod:`car_racing.training.check_replays`) — the real checks of this
   iteration's CMA-ES run(s), driven anyway to choose what to keep, join the data too: each checked C's worst
   check track, the worst ``--check-episodes`` of those, replayed from the seed and the actions the check kept.

Each iteration lives in ``CHECKPOINT_DIR/iter_NN/`` (V hard-linked, M, C, their PNGs, ``fidelity.png``). The
loop state ``CHECKPOINT_DIR/dream_loop_state.json`` (written atomically after every stage) lists the
finished stages with their wall clock and results; a rerun skips them and resumes the interrupted one
from its own saved state (M's latest epoch, CMA-ES's last generation, the recording's saved episodes).
``CHECKPOINT_DIR/dream_loop.png`` plots, per iteration, the real checks, the dream fitness and the rank
correlation. The best iteration by its real check (same check tracks every time) is copied to
``CHECKPOINT_DIR/best/``; ship it with ``export_checkpoints.py --source-dir CHECKPOINT_DIR/best``. With
``--select-top K`` the K best-checked iterations first drive ``--select-episodes`` further tracks each (the final
choice, with the iteration the stopping rule counts as best; their returns are in the loop state under
``selection``) and the best mean is copied instead.
``--patience N`` stops the loop once N iterations in a row have not beaten the best check by more than
``--patience-delta``.

Rules kept (checkable from the controller checkpoint's ``training`` record): C never sees an expert's
action and no real-env return is its fitness; the real env is used for the checks and to record data.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
import math
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
from tqdm.auto import tqdm

from car_racing.common.cli import UsageError, run_main
from car_racing.common.metrics import MetricsLog
from car_racing.common.plain_data import resume_path
from car_racing.common.runtime import (
    MEMORY_LATEST_FILE,
    checkpoint_paths,
    link_or_copy,
    load_checkpoint,
    refuse_shipped,
)
from car_racing.episodes.rollout import default_workers, uses_backend
from car_racing.recording.recorded_data import has_recorded_data, load_recorded, recorded_run, recorded_seeds
from car_racing.training.loop import (
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
    plot_loop,
    report_iteration,
    run_summary,
    save_dream_choice,
    stage_keys,
)

AGENT_SEED_BASE = 5_000_000  # iteration i records C's episodes on seeds BASE + 1000·i + j (see agent_seed_base)
RANDOM_SEED_BASE = 6_000_000
CONTROLLER_STARTS = ("warm", "zero", "both")
START_DIRS = {"warm": "warm", "zero": "from_zero"}  # --controller-start both: each run's folder in iter_NN/
# Settings that must stay the same when a loop is continued (others, e.g. --iterations, may change).
FIXED_SETTINGS = ("data_dir", "init_data_dir", "init_episodes", "init_steps", "init_noise", "random_episodes",
                  "vision_from", "memory_from", "controller_from", "seed")


@dataclass
class Args:
    """Run the World Models loop: record → V/M → CMA-ES in M's dream → real check → record with C → …"""

    data_dir: str = "data/dream_loop"
    """the loop's recording (grows every iteration)"""
    checkpoint_dir: str = "checkpoints/dream_loop"
    """the loop's models, one folder per iteration, the loop state and its PNG"""
    iterations: int = 6
    """iterations (each: train M, evolve C in the dream, measure, record with C); a rerun continues up to this"""
    patience: int = 0
    """stop early once the kept C's real check has not improved for this many iterations (0 = run all
    --iterations): the loop run to convergence, e.g. --iterations 20 --patience 5"""
    patience_delta: float = 0.0
    """--patience: a check counts as an improvement only when it beats the best so far by more than this many
    points (0 = any strict gain): the 8 check tracks saturate near the autopilot's ~926, where a few points are
    noise that would restart the count every time"""
    seed: int = 0
    """seeds every stage (each stage derives its own seed from it and the iteration)"""
    workers: int = field(default_factory=default_workers)
    """workers for real-env episodes (recording, checks, fidelity): processes, or Ray actors with --backend ray"""
    backend: Literal["processes", "ray"] = "processes"
    """where every stage's real episodes run: processes on this machine, or ray (actors on a local Ray or a cluster,
    one Ray connection for the whole loop; same results; see docs/scaling-with-ray.md)"""
    ray_address: str = ""
    """--backend ray: auto or HOST:PORT = join a running cluster; empty = the cluster in RAY_ADDRESS when that is set,
    else a private local Ray with --workers CPUs for this run (never a cluster an earlier `ray start` left behind)"""
    threads: int = 0
    """torch CPU threads for V, M and the dreams (0 = torch's default)"""
    # --- iteration 0: data and V
    init_data_dir: Optional[str] = None
    """start from this recording (hard-linked into --data-dir) instead of recording anew"""
    init_episodes: int = 64
    """noisy autopilot episodes recorded at the start (the stand-in for a person's driving)"""
    init_steps: int = 1000
    """steps per initial episode"""
    init_noise: float = 1.0
    """the autopilot's noise level in the initial recording"""
    random_episodes: int = 0
    """random-driver episodes added to the initial data"""
    vision_from: Optional[str] = None
    """use this V checkpoint instead of training one"""
    vision_epochs: int = 6
    """V's epochs when trained here (β reaches 1 after --vision-kl-anneal-epochs)"""
    vision_kl_anneal_epochs: float = 3.0
    """epochs over which V's β rises to 1"""
    # --- M
    memory_from: Optional[str] = None
    """iteration 0's M starts from this memory checkpoint instead of from scratch"""
    memory_epochs_first: int = 60
    """M's epochs in iteration 0 (0 with --memory-from: take that M as it is)"""
    memory_epochs: int = 10
    """M's epochs in every later iteration (continuing from the previous M on the grown data)"""
    memory_batch_size: int = 32
    """M's windows per gradient step"""
    memory_heads_only: bool = False
    """after iteration 0 train only M's heads (train_memory.py --freeze-lstm): h stays the same, so each kept C
    drives exactly as before in the next iteration and improvements compound"""
    memory_dropout: float = 0.0
    """dropout on h before M's heads while training M (Dropout's Dream Land: 0.05)"""
    memory_value_discount: float = 0.0
    """γ of M's value head (train_memory.py --value-discount; 0 = none): needed by --dream-value"""
    # --- C in the dream
    controller_from: Optional[str] = None
    """iteration 0's C starts from this (dream-trained) controller checkpoint instead of all zeros"""
    generations: int = 40
    """CMA-ES generations per iteration"""
    population: int = 32
    """CMA-ES population"""
    sigma0: float = 0.1
    """CMA-ES initial step size (iteration 0; later iterations start from the previous C with --sigma0-later)"""
    sigma0_later: float = 0.05
    """CMA-ES initial step size when warm-starting from the previous iteration's C"""
    rollout_steps: int = 200
    """steps per dream"""
    dream_trials: int = 16
    """dreams per candidate per generation"""
    temperature: float = 1.0
    """τ of the dreams"""
    dream_dropout: float = 0.0
    """dropout p on M's h before its heads, one mask per dream (Dropout's Dream Land: 0.1)"""
    dream_fitness: Literal["mean", "quantile", "mean-minus-std"] = "mean"
    """a candidate's fitness from its --dream-trials dreams: their mean, a lower quantile (--dream-fitness-q) or
    mean − k·std (--dream-fitness-k): pessimism against a C that only lucky dreams reward (train_controller_cmaes.py)"""
    dream_fitness_q: float = 0.25
    """--dream-fitness quantile: the quantile q in [0, 1] of the trials' returns"""
    dream_value: bool = False
    """end each dream still alive after --rollout-steps on M's value of its last state (needs
    --memory-value-discount, or a --memory-from M with a value head; train_controller_cmaes.py --dream-value)"""
    dream_fitness_k: float = 1.0
    """--dream-fitness mean-minus-std: k ≥ 0"""
    controller_start: Literal["warm", "zero", "both"] = "warm"
    """where each iteration's CMA-ES starts: the previous kept C (--sigma0-later), all zeros (--sigma0), or both
    (two runs in the new dream, iter_NN/warm/ and iter_NN/from_zero/; the one scoring better on the same real
    check tracks becomes the iteration's C, a tie goes to warm)"""
    warm_dreams: str = ""
    """a warm-started run's dreams, START:STEPS — agent:200 = 200-step dreams branched from states of C's own
    recorded episodes, scored by the plain mean of the dreams, with as many dreams as keep the dreamt steps of
    --rollout-steps × --dream-trials (near a working C these rank its neighbours as the real env does, where
    whole-episode dreams do not: bench/local_fidelity.py, docs/dream-repair.md); START recorded = states of any
    recorded episode; empty = the same dreams as a run from zero"""
    warm_generations: int = 0
    """CMA-ES generations of a warm-started run (0 = --generations): the dream ranks a C's close neighbours, not
    far ones, so a warm run takes a few small steps and the loop records C and retrains M between them"""
    carry: bool = True
    """a warm start's C is first carried onto the new M (least squares on its own outputs over the recorded data,
    car_racing/training/carry.py): retraining M moves h, and C left as it is drives ~100 worse on the new M"""
    start_states: int = 8192
    """dream start states drawn from the recorded data"""
    dream_start: Literal["recorded", "episode-start"] = "recorded"
    """recorded (states anywhere in the data) or episode-start (whole episodes from the start line)"""
    eval_every: int = 10
    """real-env checks every this many generations (they choose what to keep; never fitness)"""
    eval_episodes: int = 4
    """real episodes per check"""
    eval_seed_base: int = 1_000_000
    """check tracks: seeds BASE … BASE+eval_episodes−1, the same in every iteration"""
    eval_max_steps: int = 1000
    """step limit of the check episodes"""
    select_top: int = 0
    """the final choice: the iterations whose kept C checked best, this many (and the one --patience-delta counts as
    best), each drive --select-episodes further tracks (seeds 7,000,000 + j) with their own V, M and C, and the best
    mean becomes best/ (0 = keep the best
    check: the best of a few noisy 8-track checks is optimistic, ~±70 each)"""
    select_episodes: int = 32
    """--select-top: selection tracks per candidate"""
    # --- recording with C, measuring the dream
    agent_episodes: int = 16
    """episodes C drives (with exploration noise) per iteration, appended to the data"""
    agent_noise: float = 0.3
    """maximum exploration noise (OU std on steer, half on gas), drawn per episode"""
    agent_steps: int = 1000
    """steps per recorded C episode"""
    record_dream_choice: float = 0.5
    """fraction of those episodes driven by CMA's final mean (the dream's choice, which may exploit M: its
    episodes show M where it is wrong) instead of the kept, real-checked C"""
    repair_episodes: int = 0
    """the repair step, per iteration after the recording (0 = off): the dream's choice dreams this many dreams from
    real recorded states; each is replayed in the real env from the same state (the recorded actions up to the
    dream's start, then the dream's actions) and appended to the data (driver repair), so M learns where its
    dream lied (car_racing/training/repair.py)"""
    check_episodes: int = 0
    """every real check as data for M, per iteration after the recording (0 = off): each C this iteration's CMA-ES
    run(s) checked after generation 0 gives its worst check track, and the worst this many of those are replayed in
    the real env from their seed and actions and appended to the data (driver check): real failures of Cs the dream
    paid, with no extra V, M or C work (car_racing/training/check_replays.py)"""
    fidelity_panel: int = 8
    """controllers in each iteration's dream-real measurement (0 = skip the measurement)"""
    fidelity_episodes: int = 2
    """real tracks per controller in the measurement"""
    panel_as_data: bool = False
    """the measurement's real episodes also join the data (driver panel; episodes identical to ones recorded before
    are skipped), except in the last iteration (no next M): driving straight, circling and perturbed Cs are what M
    misjudges. Off by default: measured in run r25 (docs/dream-repair.md), the panel's fixed 2 tracks became a
    quarter of M's data and the loop checked worse"""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda[:N] for V, M and the dreams"""
    progress: bool = True
    """show tqdm progress bars"""
    tensorboard: bool = False
    """also write TensorBoard events (needs requirements-tensorboard.txt): the loop's own results per stage
    (dream_loop_metrics.jsonl, always written: step = iteration) in CHECKPOINT_DIR/tensorboard/dream_loop, and V's, M's
    and C's curves in each stage's folder"""


def check_args(args: Args) -> None:
    if args.memory_epochs_first < 0 or (args.memory_epochs_first == 0 and args.memory_from is None):
        raise UsageError(f"--memory-epochs-first {args.memory_epochs_first}: expected a positive integer "
                         f"(or 0 with --memory-from)")
    for flag in ("iterations", "init_episodes", "init_steps", "eval_max_steps", "memory_batch_size", "vision_epochs", "generations",
                 "population", "rollout_steps", "dream_trials", "start_states", "eval_episodes", "agent_steps",
                 "workers", "fidelity_episodes"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a positive integer")
    if args.patience < 0:
        raise UsageError(f"--patience {args.patience}: expected 0 (run every iteration) or more")
    if args.select_top < 0 or args.select_episodes < 1:
        raise UsageError(f"--select-top {args.select_top} / --select-episodes {args.select_episodes}: expected "
                         f"integers ≥ 0 / ≥ 1")
    for flag in ("random_episodes", "memory_epochs", "agent_episodes", "fidelity_panel", "eval_every", "threads",
                 "repair_episodes", "check_episodes", "patience_delta"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected 0 or more")
    if args.controller_start not in CONTROLLER_STARTS:
        raise UsageError(f"--controller-start {args.controller_start}: expected one of {', '.join(CONTROLLER_STARTS)}")
    from car_racing.training.fitness import check_dream_fitness

    check_dream_fitness(args)
    if args.dream_start not in ("recorded", "episode-start"):
        raise UsageError(f"--dream-start {args.dream_start}: expected recorded or episode-start")
    if args.warm_dreams:
        warm_dream_settings(args)
    if args.warm_generations < 0:
        raise UsageError(f"--warm-generations {args.warm_generations}: expected 0 (= --generations) or more")
    if 0 < args.fidelity_panel < 3:
        raise UsageError(f"--fidelity-panel {args.fidelity_panel}: expected 0 (skip) or at least 3")
    if not 0 <= args.record_dream_choice <= 1:
        raise UsageError(f"--record-dream-choice {args.record_dream_choice}: expected a fraction in [0, 1]")
    if not 0 <= args.memory_value_discount < 1:
        raise UsageError(f"--memory-value-discount {args.memory_value_discount}: expected 0 (none) or γ in (0, 1)")
    if args.dream_value and not args.memory_value_discount > 0:
        raise UsageError("--dream-value: needs M's value head in every iteration: --memory-value-discount γ > 0 "
                         "(stage 3: train_memory.py --value-discount)")
    for flag in ("memory_dropout", "dream_dropout"):
        if not 0 <= getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected 0 <= p < 1")
    for flag in ("init_data_dir", "vision_from", "memory_from", "controller_from"):
        path = getattr(args, flag)
        if path is not None and not Path(path).exists():
            raise UsageError(f"--{flag.replace('_', '-')} {path}: no such file or folder")
    if args.init_data_dir is not None and not has_recorded_data(args.init_data_dir):
        raise UsageError(f"--init-data-dir {args.init_data_dir}: holds no recording (car_racing/recorded_frames.py)")


# --- the loop state -----------------------------------------------------------------------------------

def stage_data(args: Args, iteration: int) -> dict:
    """The initial data: a linked recording, or noisy autopilot (+ random) episodes recorded now."""
    from car_racing.recording.latent_cache import LATENTS_FILE
    from car_racing.recording.recorded_data import (
        ARRAY_FILES,
        META_FILE,
        SEQ_ACTIONS_FILE,
        SEQ_DONES_FILE,
        SEQ_INDICES_FILE,
        SEQ_REWARDS_FILE,
    )

    data_dir = Path(args.data_dir)
    if args.init_data_dir is not None:
        source = Path(args.init_data_dir)
        names = [f for f, *_ in ARRAY_FILES.values()] + [SEQ_INDICES_FILE, SEQ_ACTIONS_FILE, SEQ_REWARDS_FILE,
                                                          SEQ_DONES_FILE, LATENTS_FILE, META_FILE]  # meta last
        for name in names:
            if (source / name).is_file():
                link_or_copy(source / name, data_dir / name)
    drivers = [(range(RANDOM_SEED_BASE, RANDOM_SEED_BASE + args.random_episodes), "random", 0.0)]
    if args.init_data_dir is None:
        drivers.insert(0, (range(args.seed, args.seed + args.init_episodes), "autopilot", args.init_noise))
    for seeds, driver, noise in drivers:
        record_missing(args, list(seeds), driver, noise, args.init_steps)
    data = load_recorded(data_dir, mmap=True)
    return {"episodes": len(data.episodes), "frames": len(data), "agent_seed_base": agent_seed_base(args)}


def agent_seed_base(args: Args) -> int:
    """First seed of C's recorded episodes: AGENT_SEED_BASE, or past every seed of the initial data (a loop
    started from another loop's recording must not take that loop's episodes for its own). Fixed when the loop
    starts (kept in its state), so a recording that grows later does not move it."""
    state_path = Path(args.checkpoint_dir) / STATE_FILE
    if state_path.is_file():
        saved = json.loads(state_path.read_text())["stages"].get("0:data", {}).get("agent_seed_base")
        if saved is not None:
            return int(saved)
    base = AGENT_SEED_BASE
    if args.init_data_dir is not None:
        seeds = [int(e["seed"]) for e in load_recorded(args.init_data_dir, mmap=True).episodes]
        base = max(base, 1000 * (max(seeds) // 1000 + 1))
    return base


def record_missing(args: Args, seeds: list[int], driver: str, noise: float, steps: int,
                   checkpoint_dir: Optional[Path] = None) -> None:
    """Record the given seeds that are not recorded yet (contiguous runs, appended), and merge whatever an
    interrupted run left pending: a rerun records only what is missing and never twice."""
    from car_racing import recorded_frames
    from car_racing.recording.recorded_data import merge_pending, recording_seq_len

    done = recorded_seeds(args.data_dir)
    seeds = [seed for seed in seeds if seed not in done]
    runs: list[list[int]] = []
    for seed in sorted(seeds):
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    seq_len = recording_seq_len(args.data_dir)  # appended episodes keep the recording's window length
    for run in runs:
        recorded_frames.main(recorded_frames.Args(seq_len=seq_len,
            driver=driver, episodes=len(run), random_episodes=0, steps=steps, seed=run[0], data_dir=args.data_dir,
            workers=args.workers,
            backend=args.backend, ray_address=args.ray_address, append=has_recorded_data(args.data_dir), noise=noise,
            checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else "checkpoints", progress=args.progress))
    if has_recorded_data(args.data_dir):
        merge_pending(args.data_dir)  # all were pending: merge them now


def stage_vision(args: Args, iteration: int) -> dict:
    """V: linked from --vision-from, or trained on the initial data."""
    from car_racing import train_vision

    target = checkpoint_paths(args.checkpoint_dir)["vision"]
    if args.vision_from is not None:
        load_checkpoint(args.vision_from, "vision")
        link_or_copy(Path(args.vision_from), target)
        return {"from": args.vision_from}
    latest = train_vision.main(train_vision.Args(
        data_dir=args.data_dir, checkpoint_dir=args.checkpoint_dir, epochs=args.vision_epochs,
        kl_anneal_epochs=args.vision_kl_anneal_epochs, free_bits=0.5, seed=args.seed, device=args.device,
        threads=args.threads, resume=(Path(args.checkpoint_dir) / "vision_model_latest.pth").is_file(),
        progress=args.progress, tensorboard=args.tensorboard))
    return {"best_val_loss": float(latest["best_val_loss"])}


def stage_memory(args: Args, iteration: int) -> dict:
    """M on all data so far; continues from the previous iteration's M after iteration 0."""
    from car_racing import train_memory

    folder = iteration_dir(args.checkpoint_dir, iteration)
    link_or_copy(checkpoint_paths(args.checkpoint_dir)["vision"], checkpoint_paths(folder)["vision"])
    if iteration == 0 and args.memory_epochs_first == 0:  # take --memory-from as it is
        source = load_checkpoint(args.memory_from, "memory")
        link_or_copy(Path(args.memory_from), checkpoint_paths(folder)["memory"])
        history, epoch = source.get("history", {}), int(source.get("epoch", 0))
        return {"epochs": 0, "from": args.memory_from,
                **{f"val_{k}": history[f"val_{k}"][epoch - 1] for k in ("mdn", "reward", "done")
                   if epoch and f"val_{k}" in history}}
    if iteration == 0:
        init_from, epochs = args.memory_from, args.memory_epochs_first
    else:
        init_from, epochs = str(checkpoint_paths(iteration_dir(args.checkpoint_dir, iteration - 1))["memory"]), args.memory_epochs
    best = train_memory.main(train_memory.Args(
        data_dir=args.data_dir, checkpoint_dir=str(folder), epochs=max(epochs, 1), init_from=init_from,
        batch_size=args.memory_batch_size,
        dropout=args.memory_dropout, freeze_lstm=args.memory_heads_only and iteration > 0,
        value_discount=args.memory_value_discount,
        seed=args.seed + iteration, device=args.device, threads=args.threads,
        resume=(folder / MEMORY_LATEST_FILE).is_file(), progress=args.progress, tensorboard=args.tensorboard))
    history, epoch = best["history"], int(best["epoch"])
    return {"epochs": epochs, "best_epoch": epoch, "val_mdn": history["val_mdn"][epoch - 1],
            "val_reward": history["val_reward"][epoch - 1], "val_done": history["val_done"][epoch - 1],
            "frames": best.get("data", {}).get("num_frames")}


def warm_dream_settings(args: Args) -> dict:
    """The dream settings of a warm-started run under --warm-dreams START:STEPS (stage 4's flag names)."""
    from car_racing.training.dream import WARM_DREAM_STARTS, dream_start_settings, parse_dream_setting

    start, steps = parse_dream_setting(args.warm_dreams, "--warm-dreams", WARM_DREAM_STARTS)
    return {"rollout_steps": steps, "dream_trials": max(1, args.rollout_steps * args.dream_trials // steps),
            **dream_start_settings(start), "dream_fitness": "mean"}


def dream_settings(args: Args, warm: bool) -> dict:
    """How a CMA-ES run of the loop dreams: the loop's dream flags, or --warm-dreams' for a warm start."""
    settings = {"rollout_steps": args.rollout_steps, "dream_trials": args.dream_trials, "dream_start": args.dream_start,
                "dream_start_drivers": (), "dream_fitness": args.dream_fitness,
                "generations": args.generations}
    if warm and args.warm_dreams:
        settings.update(warm_dream_settings(args))
    if warm and args.warm_generations:
        settings["generations"] = args.warm_generations
    return settings


def evolve_in_dream(args: Args, iteration: int, folder: Path, start_from: Optional[Path],
                    start_memory: Optional[Path] = None) -> dict:
    """One CMA-ES run in this iteration's dream (V and M in ``folder``): from ``start_from``'s C with
    --sigma0-later (carried from ``start_memory``, the M it was evolved on, onto this M unless --no-carry; dreams
    and generations as --warm-dreams and --warm-generations say), or from zero with --sigma0; resumes its own saved
    run. Returns its final checkpoint."""
    from car_racing import train_controller_cmaes as cmaes

    out = checkpoint_paths(folder)["controller"]
    resume = resume_path(out).is_file()  # the run's own resume file: continue it
    dreams = dream_settings(args, warm=start_from is not None)
    if dreams["dream_start_drivers"]:
        drivers = {e["driver"] for e in load_recorded(args.data_dir, mmap=True).episodes}
        if not drivers & set(dreams["dream_start_drivers"]):  # nothing of C's own yet: dreams from any recording
            dreams["dream_start_drivers"] = ()
    return cmaes.main(cmaes.Args(
        mode="dream", loop_iterations=1, population=args.population,
        sigma0=args.sigma0 if start_from is None else args.sigma0_later,
        temperature=args.temperature, dream_dropout=args.dream_dropout, start_states=args.start_states,
        **dreams, dream_fitness_q=args.dream_fitness_q, dream_fitness_k=args.dream_fitness_k,
        dream_value=args.dream_value,
        init="zero" if start_from is None else "checkpoint", init_from=str(start_from) if start_from else None,
        init_carry=args.carry, init_memory=str(start_memory) if start_memory else None,
        cma_diagonal=True, eval_every=args.eval_every, eval_episodes=args.eval_episodes,
        eval_max_steps=args.eval_max_steps,
        eval_seed_base=args.eval_seed_base, workers=args.workers, backend=args.backend, ray_address=args.ray_address,
        data_dir=args.data_dir,
        checkpoint_dir=str(folder), seed=args.seed + 1000 * iteration, device=args.device, threads=args.threads,
        resume=resume, progress=args.progress, tensorboard=args.tensorboard))


def stage_controller(args: Args, iteration: int) -> dict:
    """C by CMA-ES in this iteration's dream: from the previous iteration's kept C, from zero, or both (the
    better on the real checks is kept, linked into iter_NN/; each run resumes on its own after an interruption)."""
    folder = iteration_dir(args.checkpoint_dir, iteration)
    previous = (checkpoint_paths(iteration_dir(args.checkpoint_dir, iteration - 1))["controller"] if iteration else
                Path(args.controller_from) if args.controller_from else None)
    # the M the previous C was evolved on (iteration 0: the one --controller-from's checkpoint names)
    previous_memory = checkpoint_paths(iteration_dir(args.checkpoint_dir, iteration - 1))["memory"] if iteration else None
    if args.controller_start != "both" or previous is None:
        start = "zero" if previous is None or args.controller_start == "zero" else "warm"
        final = evolve_in_dream(args, iteration, folder, previous if start == "warm" else None, previous_memory)
        save_dream_choice(final, folder)
        return {**run_summary(final), "start": start}
    finals, summaries = {}, {}
    for start, name in START_DIRS.items():
        sub = folder / name
        for kind in ("vision", "memory"):
            link_or_copy(checkpoint_paths(folder)[kind], checkpoint_paths(sub)[kind])
        finals[start] = evolve_in_dream(args, iteration, sub, previous if start == "warm" else None, previous_memory)
        summaries[start] = run_summary(finals[start])
    scores = {start: (-math.inf if s["best_real_score"] is None else s["best_real_score"]) for start, s in summaries.items()}
    winner = "zero" if scores["zero"] > scores["warm"] else "warm"
    sub = folder / START_DIRS[winner]
    for name in (checkpoint_paths(sub)["controller"].name, "control_model_cmaes.png"):
        if (sub / name).is_file():
            link_or_copy(sub / name, folder / name)
    save_dream_choice(finals[winner], folder)
    return {**summaries[winner], "start": winner, "starts": summaries}


def stage_fidelity(args: Args, iteration: int) -> dict:
    """The dream-real rank correlation of this iteration's V and M (panel incl. this and earlier Cs); with
    --panel-as-data the panel's new real episodes join the data for the next M (a rerun records only the missing)."""
    from car_racing import evaluate_world_model

    if args.fidelity_panel == 0:
        return {"skipped": True}
    folder = iteration_dir(args.checkpoint_dir, iteration)
    earlier = [str(checkpoint_paths(iteration_dir(args.checkpoint_dir, i))["controller"]) for i in range(iteration)]
    record = args.panel_as_data and iteration < args.iterations - 1
    summary = evaluate_world_model.main(evaluate_world_model.Args(
        checkpoint_dir=str(folder), data_dir=args.data_dir, panel=args.fidelity_panel, episodes=args.fidelity_episodes,
        controllers=earlier[-2:], out=str(folder / "fidelity.png"), json_out=str(folder / "fidelity.json"),
        max_steps=args.eval_max_steps,
        seed=args.seed, workers=args.workers, backend=args.backend, ray_address=args.ray_address, device=args.device,
        progress=args.progress, record_into=args.data_dir if record else "", record_run=iteration))
    return {"rank_correlation": summary["rank_correlation"], "controllers": summary["controllers"],
            "errors": summary["errors"], "recorded_now": sum(r["recorded"] for r in summary["rows"]),
            "panel_episodes": sum(len(r["episodes"]) for r in summary["rows"]) if record else 0}


def stage_record(args: Args, iteration: int) -> dict:
    """C (with exploration noise) drives new tracks; the episodes join the data."""
    if args.agent_episodes == 0:
        return {"episodes": 0}
    first = agent_seed_base(args) + 1000 * iteration
    choice = int(round(args.record_dream_choice * args.agent_episodes))  # seeds first … first+choice−1
    folder = iteration_dir(args.checkpoint_dir, iteration)
    for seeds, source in ((range(first, first + choice), folder / DREAM_CHOICE_DIR),
                          (range(first + choice, first + args.agent_episodes), folder)):
        record_missing(args, list(seeds), "agent", args.agent_noise, args.agent_steps, checkpoint_dir=source)
    seeds = set(range(first, first + args.agent_episodes))
    episodes = {int(e["seed"]): e for e in load_recorded(args.data_dir, mmap=True).episodes if int(e["seed"]) in seeds}
    returns = [float(episodes[s]["total_reward"]) for s in sorted(episodes)]
    result = {"episodes": len(episodes), "return_mean": float(np.mean(returns)), "return_min": float(np.min(returns))}
    if choice:
        result["return_mean_dream_choice"] = float(np.mean(returns[:choice]))
    return result


def stage_repair(args: Args, iteration: int) -> dict:
    """The dream's choice's dreams, replayed in the real env from the states they started from, join the data."""
    from car_racing.common.runtime import load_model, resolve_device
    from car_racing.recording.latent_cache import load_or_build_latents
    from car_racing.training.repair import REPAIR_DRIVER, repair_iteration

    folder = iteration_dir(args.checkpoint_dir, iteration)
    mdnrnn, memory = load_model(checkpoint_paths(folder)["memory"], "memory")
    controller, _ = load_model(checkpoint_paths(folder / DREAM_CHOICE_DIR)["controller"], "controller")
    mu, _ = load_or_build_latents(args.data_dir, checkpoint_paths(folder)["vision"], resolve_device(args.device),
                                  progress=args.progress)
    scale = float(memory.get("reward", {}).get("scale", 1.0))
    result = repair_iteration(args.data_dir, mdnrnn, mu, controller.get_flat_params(), iteration, args.repair_episodes,
                              seed=args.seed, rollout_steps=args.rollout_steps, temperature=args.temperature,
                              dropout=args.dream_dropout, reward_scale=1.0 / scale,
                              from_start=args.dream_start == "episode-start", progress=args.progress)
    episodes = recorded_run(args.data_dir, REPAIR_DRIVER, "repair_iteration", iteration)
    dream = [float(e["noise"]["dream_return"]) for e in episodes]
    real = [float(e["total_reward"]) for e in episodes]
    return {"episodes": len(episodes), "recorded_now": result["recorded_now"],
            "dream_return_mean": float(np.mean(dream)) if dream else None,
            "real_return_mean": float(np.mean(real)) if real else None, "rows": result["rows"]}


def stage_checks(args: Args, iteration: int) -> dict:
    """This iteration's real checks, replayed into the data: real failures of the Cs the dream paid most."""
    from car_racing.training.check_replays import CHECK_DRIVER, plan_check_replays, record_check_replays

    folder = iteration_dir(args.checkpoint_dir, iteration)
    # with --controller-start both, each run's own checkpoint (iter_NN/'s C is a link to the winner's)
    runs = {start: folder / name for start, name in START_DIRS.items()
            if checkpoint_paths(folder / name)["controller"].is_file()} or {"kept": folder}
    checked = {start: load_checkpoint(checkpoint_paths(path)["controller"], "controller").get("checked") or []
               for start, path in runs.items()}
    plan = plan_check_replays(checked, args.check_episodes)
    result = record_check_replays(args.data_dir, plan, iteration, progress=args.progress)
    episodes = recorded_run(args.data_dir, CHECK_DRIVER, "check_iteration", iteration)
    checks = np.array([float(e["noise"]["check_return"]) for e in episodes])
    replays = np.array([float(e["total_reward"]) for e in episodes])
    return {"episodes": len(episodes), "recorded_now": result["recorded_now"],
            "checks_available": sum(len(c) for c in checked.values()),
            "check_return_mean": float(checks.mean()) if len(checks) else None,
            "replay_return_mean": float(replays.mean()) if len(replays) else None,
            "replays_differing": int(np.sum(np.abs(checks - replays) > 0.01)),
            "rows": result["rows"]}


def select_iterations(args: Args, state: LoopState) -> dict[int, list[float]]:
    """The final choice (--select-top): the iterations whose kept C checked best drive the selection tracks, each
    with its own V, M and C, and so does the iteration the stopping rule counts as best when it is not among them
    (with --patience-delta a later check within D of it is no better, yet may rank above it). Returns their returns
    by iteration; each candidate's are saved in the loop state as soon as it has driven (a rerun, also one with more
    iterations, drives only the missing ones)."""
    from car_racing.episodes.agent import evaluate_agent
    from car_racing.episodes.rollout import Backend

    ranked = checked_iterations(state, args.iterations)
    checked = ranked[:args.select_top]
    rule_best = counted_best(state, args.iterations - 1, args.patience_delta)
    if rule_best is not None and rule_best not in [i for _, i in checked]:
        checked += [(score, i) for score, i in ranked if i == rule_best]
    seeds = [SELECT_SEED_BASE + j for j in range(args.select_episodes)]
    saved = state.data.get("selection", {})
    if saved.get("seeds") != seeds or saved.get("max_steps") != args.eval_max_steps:
        saved = {"seeds": seeds, "max_steps": args.eval_max_steps, "returns": {}}
    state.data["selection"] = saved
    for score, iteration in checked:
        if str(iteration) not in saved["returns"]:
            print(f"final choice: iteration {iteration}'s C (check {score:.1f}) drives {len(seeds)} selection tracks")
            results = evaluate_agent(iteration_dir(args.checkpoint_dir, iteration), seeds,
                                     max_steps=args.eval_max_steps, workers=args.workers, backend=Backend.from_args(args))
            saved["returns"][str(iteration)] = [float(r.total_reward) for r in results]
            state.save()
    return {iteration: saved["returns"][str(iteration)] for _, iteration in checked}


STAGES = [Stage("data", stage_data, True), Stage("vision", stage_vision, True), Stage("memory", stage_memory),
          Stage("controller", stage_controller), Stage("fidelity", stage_fidelity),
          Stage("record", stage_record, feeds_next=True), Stage("repair", stage_repair, feeds_next=True),
          Stage("checks", stage_checks, feeds_next=True)]
OPTIONAL_STAGES = {"repair": "repair_episodes", "checks": "check_episodes"}  # stages run only when their flag is > 0


@uses_backend
def main(args: Args) -> dict:
    """Run (or continue) the loop; returns the loop state (one Ray connection for every stage with --backend ray)."""
    check_args(args)
    refuse_shipped(args.checkpoint_dir)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    Path(args.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    state = LoopState(Path(args.checkpoint_dir) / STATE_FILE, args, FIXED_SETTINGS)
    state.save()
    metrics = MetricsLog(args.checkpoint_dir, "dream_loop", tensorboard=args.tensorboard,
                         keep=lambda record: state.done(f"{record.get('step')}:{record.get('stage')}"))
    keys = stage_keys([s for s in STAGES if getattr(args, OPTIONAL_STAGES.get(s.name, "iterations"))], args.iterations)
    bar = tqdm(keys, desc="dream loop", unit="stage", disable=not args.progress,
               initial=sum(state.done(f"{i}:{s.name}") for i, s in keys), total=len(keys))
    for iteration, stage in keys:
        if iteration > 0 and converged(state, iteration - 1, args.patience, args.patience_delta) is not None:
            break  # converged: no further iteration
        if stage.feeds_next and converged(state, iteration, args.patience, args.patience_delta) is not None:
            continue  # no next M to record for
        key = f"{iteration}:{stage.name}"
        if state.done(key) or (stage.name in OPTIONAL_STAGES and state.done(f"{iteration + 1}:memory")):
            continue  # (a stage switched on later starts with the first iteration whose data can still grow)
        bar.set_description(f"dream loop: iteration {iteration}, {stage.name}")
        (tqdm.write if args.progress else print)(f"\n=== dream loop: iteration {iteration}/{args.iterations - 1}, "
                                                 f"{stage.name} ===")
        torch.set_num_threads(threads)  # a stage's thread choice must not leak into the next
        started = time.time()
        result = stage.run(args, iteration)
        metrics.log(iteration, {f"{stage.name}/{k}": v for k, v in result.items()}, stage=stage.name,
                    seconds=time.time() - started)
        state.finish(key, time.time() - started, result)
        bar.update(1)
        if stage.name in ("fidelity", "record", *OPTIONAL_STAGES) or (stage.name == "controller" and args.fidelity_panel == 0):
            (tqdm.write if args.progress else print)(report_iteration(state, iteration))
            plot_loop(state, Path(args.checkpoint_dir) / PLOT_FILE, args.iterations)
    bar.close()
    metrics.close()
    ran = [i for i in range(args.iterations) if state.done(f"{i}:controller")]
    stopped = converged(state, ran[-1], args.patience, args.patience_delta) if ran else None
    state.data["stopped_early"] = (None if stopped is None or len(ran) == args.iterations else
                                   {"after_iteration": ran[-1], "best_checked_iteration": stopped,
                                    "patience": args.patience, "patience_delta": args.patience_delta})
    plot_loop(state, Path(args.checkpoint_dir) / PLOT_FILE, args.iterations)
    selection = select_iterations(args, state) if args.select_top else None
    best = choose_best(args.checkpoint_dir, args.iterations, state,
                       None if selection is None else {i: float(np.mean(r)) for i, r in selection.items()})
    state.data["best_iteration"] = best
    state.data["best_by"] = "checks" if not selection else f"mean over {args.select_episodes} selection tracks"
    state.save()
    print(f"\ndream loop: {len(ran)} iterations in {state.total_seconds() / 60:.1f} min of stage time")
    if state.data["stopped_early"]:
        print(f"converged: stopped after iteration {ran[-1]}; no check beat iteration {stopped}'s by more than "
              f"{args.patience_delta:g} in the {args.patience} iterations after it (--patience {args.patience})")
    for iteration in ran:
        print(report_iteration(state, iteration))
    for iteration, returns in (selection or {}).items():
        print(f"final choice: iteration {iteration}: check {state.result(f'{iteration}:controller')['best_real_score']:.1f}, "
              f"selection {np.mean(returns):.1f} ± {np.std(returns):.1f} (min {np.min(returns):.1f}) "
              f"over {len(returns)} tracks")
    if best is not None:
        print(f"best iteration by the {state.data['best_by']}: {best} (kept C checked "
              f"{state.result(f'{best}:controller')['best_real_score']:.1f}); V, M, C linked into "
              f"{Path(args.checkpoint_dir) / 'best'}")
    return state.data


if __name__ == "__main__":
    run_main(main, Args)
