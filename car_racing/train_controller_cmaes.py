"""Stage 4: evolve the controller C with CMA-ES (pycma, ask/tell), in M's dream or in the real env.

C is linear on ``[z, h]``. **Dream mode** (default): every candidate drives ``--dream-trials`` dreams of
``--rollout-steps`` steps inside M, started from real (z, h) states of the recording; its fitness is the
sum of M's predicted rewards (:class:`car_racing.training.fitness.DreamFitness`). **Real mode** (``--mode
real``, the paper's way): the mean return of ``--real-trials`` real episodes, on worker processes or Ray
actors (``--preset paper`` sets the paper's protocol). Every ``--eval-every`` generations the best candidate
and CMA's mean drive ``--eval-episodes`` fixed real tracks: these checks choose which parameters the
checkpoint keeps, never the fitness. ``--init`` picks CMA's initial mean
(:mod:`car_racing.training.warm_starts`). The checkpoint records how C was made (``training``: fitness
source, warm start, generations, whether expert labels or real returns shaped it anywhere in its lineage)
and is saved every generation, so ``--resume`` continues the run; ``control_model_cmaes.png`` plots it.

    python car_racing/train_controller_cmaes.py --generations 200 --init bc
    python car_racing/train_controller_cmaes.py --generations 300 --resume
    python car_racing/train_controller_cmaes.py --preset paper --backend ray --ray-address auto --workers 256
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

from car_racing.common.cli import UsageError, run_main
from car_racing.common.metrics import require_tensorboard
from car_racing.common.runtime import refuse_shipped
from car_racing.episodes.rollout import default_workers, uses_backend


@dataclass
class Args:
    """Evolve the controller C with CMA-ES in M's dream (or the real env) and check it in the real env."""
    mode: Literal["dream", "real"] = "dream"
    """fitness from dreams inside M (fast) or from real-env episodes (the paper's way, slow)"""
    population: int = 32
    """CMA-ES population size (candidates per generation)"""
    sigma0: float = 0.1
    """CMA-ES initial step size"""
    generations: int = 15
    """total generations (with --resume: continue until this many; 0 = only the warm start and its check); with
    --loop-iterations > 1, per iteration and start"""
    rollout_steps: Optional[int] = None
    """steps per dream (dream mode) or the episode step limit (real mode); default 200 in dream mode (short dreams
    from recorded states: not exploited, docs/dream-repair.md) and 1000 in real mode; 1000 with --dream-start
    episode-start = whole episodes from the start line, so C is paid for a whole lap's tiles, as in the real env"""
    dream_trials: int = 40
    """dreams per candidate per generation (shared start states and noise across candidates)"""
    real_trials: int = 2
    """real mode: real episodes per candidate per generation (same tracks for every candidate)"""
    stall_steps: int = 0
    """real mode: a training episode ends after this many steps in a row without a new track tile (the car is
    off the road or lost; its return so far is its fitness), 0 = never; checks always drive whole episodes"""
    temperature: float = 1.0
    """τ for sampling M's next z in dreams (logits / τ, σ·√τ; 0 = most likely component's mean)"""
    dream_dropout: float = 0.1
    """dropout p on M's h before its heads, one mask per dream (Dropout's Dream Land; M trained with
    train_memory.py --dropout); 0 = off"""
    dream_fitness: Literal["mean", "quantile", "mean-minus-std"] = "mean"
    """how a candidate's --dream-trials dreams (each with its own dropout mask and noise) make its fitness: their
    mean, a pessimistic lower quantile (--dream-fitness-q), or mean − k·std (--dream-fitness-k; ME-TRPO/MOPO:
    a C that only the luckiest dreams reward is not rewarded)"""
    dream_value: bool = True
    """end each dream still alive after --rollout-steps on M's value of its last state (M trained with
    train_memory.py --value-discount): short dreams are then paid for where they leave the car, not only for the
    tiles they reached (Dreamer's bootstrap)"""
    dream_fitness_q: float = 0.25
    """--dream-fitness quantile: the quantile q in [0, 1] of the trials' returns (0 = the worst dream)"""
    dream_fitness_k: float = 1.0
    """--dream-fitness mean-minus-std: k ≥ 0 in mean − k·std over the trials (std with 1/N)"""
    dream_dtype: Literal["float32", "bfloat16"] = "float32"
    """precision of the dream's two large products (M's LSTM and MDN head); bfloat16 is ~2× faster on CPUs
    with bf16 instructions and on GPUs, and keeps the cell state, rewards, C and sampling in float32
    (see car_racing/training/dream.py)"""
    start_states: int = 8192
    """size of the pool of recorded (z, h) states the dreams start from"""
    dream_start: Literal["recorded", "episode-start"] = "recorded"
    """where dreams start: recorded (z, h) states anywhere in the recorded episodes, or episode-start (the first
    frame of each recorded episode with M's zero state: with --rollout-steps 1000, whole episodes from the start line)"""
    dream_start_drivers: tuple[str, ...] = ()
    """--dream-start recorded: take start states only from episodes of these drivers (e.g. agent: C's own
    episodes, recorded by the dream loop; short dreams branched from on-policy states, as MBPO); empty = all"""
    init: Literal["zero", "bc", "dagger", "checkpoint"] = "zero"
    """CMA's initial mean: all-zero parameters, C fitted to the recorded actions (bc: behaviour cloning),
    C fitted by DAgger with the autopilot as the expert in the real env (see car_racing/training/imitation.py), or
    the C of an existing controller checkpoint (--init-from; e.g. to fine-tune a DAgger C with --mode real)"""
    init_from: Optional[str] = None
    """--init checkpoint: the controller checkpoint to start from (default: CHECKPOINT_DIR/control_model_cmaes.pth,
    which the new run then replaces; its C stays the best unless a real-env check beats it)"""
    init_carry: bool = True
    """--init checkpoint: when the start C was evolved on another M than CHECKPOINT_DIR's (its checkpoint names the
    file and its sha256), refit it onto this M's h by least squares on its own outputs over the recorded data
    before CMA starts (car_racing/training/carry.py: retraining M moves h, and a C left as it is drives ~100
    worse); --no-init-carry starts from the C as it is"""
    init_memory: Optional[str] = None
    """--init checkpoint: the M the start C was evolved on (default: the one its checkpoint names)"""
    dagger_rounds: int = 12
    """--init dagger: rounds in which C drives and the clean autopilot labels its states (after round 0,
    where the noisy autopilot drives)"""
    dagger_episodes: int = 8
    """--init dagger: real episodes per round"""
    dagger_noise: float = 1.0
    """--init dagger: the autopilot's noise level in round 0 (as in car_racing/recorded_frames.py)"""
    bc_ridge: float = 10.0
    """--init bc / dagger: ridge λ on standardised inputs (λ·Var(x_j) added to the Gram diagonal; bias not penalised);
    M's 512 hidden units are highly collinear: a small λ (1e-3) fits the recorded actions closely but
    drives badly in the real env (large weights amplify h's drift), λ ≈ 1–10 drives"""
    bc_eps: float = 0.02
    """--init bc / dagger: actions are clipped ε inside their range before atanh (steer) / logit (gas, brake)"""
    cma_diagonal: bool = False
    """use separable (diagonal) CMA-ES: much faster ask/tell and a small checkpoint for large C"""
    eval_every: int = 5
    """every this many generations the best candidate and CMA's mean drive real episodes (0 = never)"""
    eval_episodes: int = 8
    """real episodes per real-env check (8 tracks: a check's standard error is still ~±70)"""
    eval_max_steps: int = 1000
    """step limit of the real-env check episodes"""
    eval_seed_base: int = 1_000_000
    """real-env checks use seeds BASE .. BASE+eval_episodes-1; real-mode training uses BASE+10000 upwards
    (keep these away from the recording seeds)"""
    smoothing: float = 0.0
    """action smoothing in real episodes (checks and --mode real): a_t = (1-s)·C(z_t, h_t) + s·a_{t-1};
    0 = off, as in the dreams (the simulator's default is 0.3)"""
    workers: int = field(default_factory=default_workers)
    """workers for real-env episodes: processes (1 = in this process) or, with --backend ray, Ray actors"""
    backend: Literal["processes", "ray"] = "processes"
    """where real-env episodes (--mode real, checks, DAgger) run: processes on this machine, or ray (actors on a
    local Ray or a cluster; same results; see docs/scaling-with-ray.md)"""
    ray_address: str = ""
    """--backend ray: auto or HOST:PORT = join a running cluster; empty = the cluster in RAY_ADDRESS when that is set,
    else a private local Ray with --workers CPUs for this run (never a cluster an earlier `ray start` left behind)"""
    loop_iterations: int = 3
    """1 = one CMA-ES run in M's dream (the seed's stage 4). N > 1 (dream mode, --init zero or checkpoint; --mode real
    and --init bc/dagger always run one pass) = the repair loop of car_racing/dream_loop.py inside this stage, N
    iterations: C evolves in M's dream; C's own episodes and the repair replays (the dream's actions
    replayed in the real env) are recorded into DATA_DIR/dream_loop; M continues on all data; C evolves again in the
    new dream … One pass is exploited by C (the dream pays ~1,100 for drivers the real env pays −40), the loop
    shows M where its dream lies (docs/dream-repair.md). The loop lives in CHECKPOINT_DIR/dream_loop; the
    iteration whose C checked best gives CHECKPOINT_DIR its M and C (stage 3's M is kept there as
    memory_from_stage3.pth); --resume continues an interrupted loop"""
    loop_patience: int = 0
    """--loop-iterations > 1: stop the loop early once the kept C's check has not improved for this many iterations
    (0 = run all of them; e.g. --loop-iterations 20 --loop-patience 5 runs the loop to convergence)"""
    loop_patience_delta: float = 0.0
    """--loop-patience: a check counts as an improvement only when it beats the best so far by more than this
    (0 = any strict gain; the 8 check tracks saturate near ~926, where a few points are noise)"""
    loop_controller_start: Literal["warm", "zero", "both"] = "both"
    """--loop-iterations > 1: each later iteration's CMA-ES starts from the last kept C, from zero, or both (the
    better real check is kept): retraining M moves h, so neither start wins every time"""
    loop_warm_dreams: str = ""
    """--loop-iterations > 1: a warm start's dreams, START:STEPS (agent:200 = 200-step dreams branched from C's own
    recorded episodes, scored by their mean; dream_loop.py --warm-dreams); empty = the same dreams as from zero"""
    loop_warm_generations: int = 0
    """--loop-iterations > 1: CMA-ES generations of a warm start (0 = --generations)"""
    loop_memory_epochs: int = 4
    """--loop-iterations > 1: M's epochs per later iteration, continuing on all data (dropout as stage 3's M)"""
    loop_agent_episodes: int = 16
    """--loop-iterations > 1: episodes recorded per iteration, half by the kept C and half by the dream's choice
    (CMA's final mean), with exploration noise"""
    loop_repair_episodes: int = 8
    """--loop-iterations > 1: dreams of the dream's choice replayed in the real env per iteration (0 = no repair)"""
    loop_check_episodes: int = 0
    """--loop-iterations > 1: the iteration's real checks as data for M: the worst check tracks of the Cs checked
    after generation 0 (one per checked C), this many, replayed from their seed and actions into the loop's data
    (dream_loop.py --check-episodes; 0 = the checks are not recorded)"""
    loop_fidelity_panel: int = 0
    """--loop-iterations > 1: each iteration's dream-real measurement (car_racing/evaluate_world_model.py): this many
    controllers (zero, straight, circling, random, the kept Cs and perturbed copies) on 2 real tracks each
    (dream_loop.py --fidelity-panel; 0 = off, else ≥ 3); the rank correlation per iteration is in the loop's PNG"""
    loop_panel_as_data: bool = False
    """--loop-fidelity-panel: the panel's new real episodes also join the loop's data for the next M (dream_loop.py
    --panel-as-data; measured in run r25, docs/dream-repair.md: off by default)"""
    loop_select_top: int = 2
    """--loop-iterations > 1: the final choice: the iterations whose C checked best, this many, drive
    --loop-select-episodes further tracks each, with the iteration --loop-patience-delta counts as best, and the best
    mean is kept (0 = keep the best check, which is the best of several noisy 8-track checks and so optimistic)"""
    loop_select_episodes: int = 32
    """--loop-select-top: tracks per candidate (seeds 7,000,000 + j: never recorded, trained on or checked)"""
    preset: Optional[Literal["seed", "paper"]] = None
    """seed: the seed repo's stage 4 (one pass, 200 generations of 16 dreams of 50 steps from recorded states, mean
    fitness, no dropout, checks on 4 tracks every 10); paper: the paper's protocol (--mode real, population 64, 16
    episodes per candidate of up to 1000 steps, 1800 generations, checks every 25 generations on 1024 tracks). The
    values are in Args.PRESETS; flags given on the command line win"""
    batch_size: int = 256
    """windows per batch when running M over the recorded data (and frames per batch when encoding)"""
    data_dir: str = "data"
    """recorded data (dream start states, --init bc)"""
    checkpoint_dir: str = "checkpoints"
    """reads vision_model.pth and memory_model.pth, writes control_model_cmaes.pth and .png"""
    seed: int = 0
    """seeds CMA-ES, the start-state pool, each generation's dreams and the real-mode tracks"""
    device: str = "auto"
    """device of the dreams: auto (CUDA when available), cpu or cuda[:N]; real episodes run on the CPU"""
    threads: int = 0
    """torch CPU threads for the dreams (0 = torch's default; 1 is faster on a machine busy with other jobs)"""
    resume: bool = False
    """continue the run saved in CHECKPOINT_DIR/control_model_cmaes.pth"""
    tensorboard: bool = False
    """also write the per-generation scalars (controller_metrics.jsonl, always written) as TensorBoard events in
    CHECKPOINT_DIR/tensorboard/controller (needs: pip install -r requirements-tensorboard.txt)"""
    progress: bool = True
    """show tqdm progress bars"""

    # Applied by the command-line parser before the flags (flags given win); from Python: cli.preset_args.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "seed": {"loop_iterations": 1, "population": 32, "sigma0": 0.1, "generations": 200, "rollout_steps": 50,
                 "dream_trials": 16, "dream_dropout": 0.0, "dream_fitness": "mean", "dream_start": "recorded",
                 "dream_value": False,
                 "eval_every": 10, "eval_episodes": 4},
        "paper": {"mode": "real", "loop_iterations": 1, "population": 64, "real_trials": 16, "rollout_steps": 1000,
                  "generations": 1800, "eval_every": 25, "eval_episodes": 1024, "eval_max_steps": 1000},
    }


def uses_repair_loop(args: Args) -> bool:
    """The repair loop trains C in the dream, from zero or a controller checkpoint; real-env CMA-ES and the
    imitation warm starts (bc, dagger) always run one pass."""
    return args.loop_iterations > 1 and args.mode == "dream" and args.init in ("zero", "checkpoint")


DREAM_ROLLOUT_STEPS, REAL_EPISODE_STEPS = 200, 1000  # --rollout-steps' default in each mode


def with_rollout_steps(args: Args) -> Args:
    """``args`` with --rollout-steps resolved: given, or 200-step dreams in dream mode and whole 1000-step
    episodes in real mode (one default could not serve both)."""
    if args.rollout_steps is not None:
        return args
    return dataclasses.replace(args, rollout_steps=DREAM_ROLLOUT_STEPS if args.mode == "dream" else REAL_EPISODE_STEPS)


def check_args(args: Args) -> None:
    from car_racing.training.fitness import REAL_TRAIN_SEED_OFFSET, check_dream_fitness

    if args.generations < 0:
        raise UsageError(f"--generations {args.generations}: expected 0 (warm start only) or more")
    for flag, value in (("--population", args.population),
                        ("--rollout-steps", args.rollout_steps), ("--dream-trials", args.dream_trials),
                        ("--real-trials", args.real_trials), ("--start-states", args.start_states),
                        ("--eval-episodes", args.eval_episodes), ("--eval-max-steps", args.eval_max_steps),
                        ("--workers", args.workers), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} {value}: expected a positive integer")
    if args.population < 2:
        raise UsageError(f"--population {args.population}: CMA-ES needs at least 2 candidates")
    if not args.sigma0 > 0:
        raise UsageError(f"--sigma0 {args.sigma0}: expected a positive step size")
    if args.eval_every < 0:
        raise UsageError(f"--eval-every {args.eval_every}: expected 0 (never) or a positive integer")
    if args.temperature < 0:
        raise UsageError(f"--temperature {args.temperature}: expected τ ≥ 0")
    if not 0 <= args.dream_dropout < 1:
        raise UsageError(f"--dream-dropout {args.dream_dropout}: expected 0 <= p < 1")
    check_dream_fitness(args)
    if args.bc_ridge < 0 or not 0 < args.bc_eps < 0.5:
        raise UsageError(f"--bc-ridge {args.bc_ridge} / --bc-eps {args.bc_eps}: expected ridge ≥ 0 and 0 < ε < 0.5")
    if not 0 <= args.smoothing < 1:
        raise UsageError(f"--smoothing {args.smoothing}: expected 0 ≤ s < 1")
    if args.dagger_rounds < 0 or args.dagger_episodes < 1 or not 0 <= args.dagger_noise <= 10:
        raise UsageError(f"--dagger-rounds {args.dagger_rounds} / --dagger-episodes {args.dagger_episodes} / "
                         f"--dagger-noise {args.dagger_noise}: expected rounds ≥ 0, episodes ≥ 1, 0 ≤ noise ≤ 10")
    if args.dagger_episodes > 1000:
        raise UsageError(f"--dagger-episodes {args.dagger_episodes}: expected at most 1000 (seeds per round)")
    if args.stall_steps < 0:
        raise UsageError(f"--stall-steps {args.stall_steps}: expected 0 (never) or a positive number of steps")
    if args.threads < 0:
        raise UsageError(f"--threads {args.threads}: expected 0 (torch's default) or a positive integer")
    if args.loop_iterations < 1:
        raise UsageError(f"--loop-iterations {args.loop_iterations}: expected 1 (one pass) or more (the repair loop)")
    if uses_repair_loop(args):
        if args.eval_every == 0:
            raise UsageError("--eval-every 0: the repair loop keeps the iteration whose C checks best; it needs checks")
        for flag in ("loop_memory_epochs", "loop_agent_episodes", "loop_repair_episodes", "loop_select_top",
                     "loop_patience", "loop_patience_delta", "loop_check_episodes", "loop_fidelity_panel"):
            if getattr(args, flag) < 0:
                raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected 0 or more")
        if 0 < args.loop_fidelity_panel < 3:
            raise UsageError(f"--loop-fidelity-panel {args.loop_fidelity_panel}: expected 0 (off) or at least 3")
        if args.loop_select_episodes < 1:
            raise UsageError(f"--loop-select-episodes {args.loop_select_episodes}: expected a positive integer")
        if args.loop_warm_dreams:
            from car_racing.training.dream import WARM_DREAM_STARTS, parse_dream_setting

            parse_dream_setting(args.loop_warm_dreams, "--loop-warm-dreams", WARM_DREAM_STARTS)
        if args.loop_warm_generations < 0:
            raise UsageError(f"--loop-warm-generations {args.loop_warm_generations}: expected 0 (= --generations) "
                             f"or more")
    if args.eval_episodes >= REAL_TRAIN_SEED_OFFSET:
        raise UsageError(f"--eval-episodes {args.eval_episodes}: expected fewer than {REAL_TRAIN_SEED_OFFSET}")


@uses_backend
def main(args: Args) -> dict:
    """Evolve C: the warm start (or the saved run), the generations, the final report; returns the final
    checkpoint dict (also in CHECKPOINT_DIR)."""
    args = with_rollout_steps(args)
    check_args(args)
    refuse_shipped(args.checkpoint_dir)
    if args.tensorboard:
        require_tensorboard()
    import torch

    from car_racing.common.runtime import seed_everything
    from car_racing.training.cmaes_run import load_setup

    if uses_repair_loop(args):
        return run_repair_loop(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    setup = load_setup(args)
    try:
        return evolve_controller(setup)
    finally:
        setup.close_real()


def evolve_controller(setup: Any) -> dict:
    """The warm start (or the saved run), the generations, the final report: :func:`main` after loading."""
    from car_racing.common.runtime import load_checkpoint
    from car_racing.training.cmaes_run import PLOT_FILE, Run, plot_history, warn_check_seed_overlap
    from car_racing.training.fitness import FITNESS_SOURCES
    from car_racing.training.warm_starts import WARM_STARTS, load_dagger_state

    args = setup.args
    dagger_state = load_dagger_state(setup.checkpoint_dir, args, setup.models_used)
    continue_dagger = dagger_state is not None and (len(dagger_state["rounds"]) < args.dagger_rounds + 1
                                                    or not setup.out_path.is_file())  # (stopped before generation 0)
    if args.resume and not continue_dagger:
        run = Run.resume(setup)
    else:
        x0, warm_start = WARM_STARTS[args.init](setup, dagger_state if continue_dagger else None)
        warn_check_seed_overlap(args)
        run = Run.start(setup, x0, warm_start)
    if run.generation < args.generations:
        fitness_source = FITNESS_SOURCES[args.mode](setup)
        try:
            run.evolve(fitness_source)
        finally:
            fitness_source.close()
    else:
        if args.resume:
            print(f"{setup.out_path} is already at generation {run.generation} (--generations {args.generations})")
        plot_history(run.history, setup.checkpoint_dir / PLOT_FILE, args.mode)
    final = load_checkpoint(setup.out_path, "controller")
    score = "none yet" if final["best_real_score"] is None else f"{final['best_real_score']:.1f}"
    print(f"generation {final['generation']}: checkpoint {setup.out_path} holds {final['model_source']}; "
          f"best real score {score}")
    return final


LOOP_DIR = "dream_loop"  # the repair loop's folder inside --checkpoint-dir and --data-dir
STAGE3_MEMORY_FILE = "memory_from_stage3.pth"  # stage 3's M, kept in the loop's folder: iteration 0 dreams in it


def run_repair_loop(args: Args) -> dict:
    """Stage 4 as the repair loop (``--loop-iterations`` > 1): :func:`car_racing.dream_loop.main` on this stage's
    files, then the best-checked iteration's M and C written to CHECKPOINT_DIR. Returns C's final checkpoint."""
    from car_racing import dream_loop
    from car_racing.common.runtime import checkpoint_paths, link_or_copy, load_checkpoint
    from car_racing.training.loop import PLOT_FILE, STATE_FILE, iteration_dir

    paths = checkpoint_paths(args.checkpoint_dir)
    loop_dir = Path(args.checkpoint_dir) / LOOP_DIR
    stage3_memory = loop_dir / STAGE3_MEMORY_FILE
    if (loop_dir / STATE_FILE).is_file():
        if not args.resume:
            raise UsageError(f"{loop_dir}: holds a repair loop already: --resume continues it; to start over, remove "
                             f"it and {Path(args.data_dir) / LOOP_DIR}")
        memory = load_checkpoint(stage3_memory, "memory")
    else:
        for kind, stage in (("vision", "train_vision.py (stage 2)"), ("memory", "train_memory.py (stage 3)")):
            if not paths[kind].is_file():
                raise UsageError(f"{paths[kind]}: missing; run {stage} first")
        memory = load_checkpoint(paths["memory"], "memory")  # one-line error for a file that is not an M
        link_or_copy(paths["memory"], stage3_memory)
    controller_from = None
    if args.init == "checkpoint":
        controller_from = Path(args.init_from) if args.init_from else paths["controller"]
        if not controller_from.is_file():
            raise UsageError(f"--init-from {controller_from}: no such controller checkpoint")
    state = dream_loop.main(dream_loop.Args(
        data_dir=str(Path(args.data_dir) / LOOP_DIR), checkpoint_dir=str(loop_dir), iterations=args.loop_iterations,
        patience=args.loop_patience, patience_delta=args.loop_patience_delta, seed=args.seed, workers=args.workers, backend=args.backend,
        ray_address=args.ray_address, threads=args.threads,
        init_data_dir=args.data_dir, vision_from=str(paths["vision"]), memory_from=str(stage3_memory),
        memory_epochs_first=0, memory_epochs=args.loop_memory_epochs, memory_dropout=float(memory.get("dropout", 0.0)),
        memory_value_discount=float((memory.get("value") or {}).get("discount", 0.0)), dream_value=args.dream_value,
        controller_from=str(controller_from) if controller_from else None,
        generations=args.generations, population=args.population, sigma0=args.sigma0,
        rollout_steps=args.rollout_steps, dream_trials=args.dream_trials, temperature=args.temperature,
        dream_dropout=args.dream_dropout, dream_fitness=args.dream_fitness, dream_fitness_q=args.dream_fitness_q,
        dream_fitness_k=args.dream_fitness_k, controller_start=args.loop_controller_start, carry=args.init_carry,
        warm_dreams=args.loop_warm_dreams, warm_generations=args.loop_warm_generations,
        start_states=args.start_states, dream_start=args.dream_start, eval_every=args.eval_every,
        eval_episodes=args.eval_episodes, eval_seed_base=args.eval_seed_base, eval_max_steps=args.eval_max_steps,
        agent_episodes=args.loop_agent_episodes, agent_steps=args.eval_max_steps,
        repair_episodes=args.loop_repair_episodes, check_episodes=args.loop_check_episodes, select_top=args.loop_select_top,
        select_episodes=args.loop_select_episodes, fidelity_panel=args.loop_fidelity_panel,
        panel_as_data=args.loop_panel_as_data, device=args.device, progress=args.progress,
        tensorboard=args.tensorboard))
    best = state.get("best_iteration")
    if best is None:
        raise UsageError(f"{loop_dir}: no iteration's C was checked in the real env; nothing to keep")
    best_dir = loop_dir / "best"
    for kind in ("memory", "controller"):  # atomic: a crash leaves either the old file or the new one
        link_or_copy(checkpoint_paths(best_dir)[kind], paths[kind])
    plot = iteration_dir(loop_dir, best) / "control_model_cmaes.png"
    if plot.is_file():
        link_or_copy(plot, Path(args.checkpoint_dir) / plot.name)
    final = load_checkpoint(paths["controller"], "controller")
    returns = state.get("selection", {}).get("returns", {}).get(str(best))
    why = (f"checked best ({final['best_real_score']:.1f} on {args.eval_episodes} tracks)" if returns is None else
           f"won the final choice ({sum(returns) / len(returns):.1f} over {len(returns)} selection tracks; "
           f"{final['best_real_score']:.1f} on its {args.eval_episodes} check tracks)")
    print(f"stage 4: iteration {best} of the repair loop {why}; its M and C are now {paths['memory']} and {paths['controller']} "
          f"(stage 3's M: {stage3_memory}; the loop's curves: {loop_dir / PLOT_FILE})")
    return final


if __name__ == "__main__":
    run_main(main, Args)
