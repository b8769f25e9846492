"""Stage 4: evolve the controller C with CMA-ES (pycma, ask/tell), in M's dream or in the real env.

**Dream mode** (default). Each generation, every candidate (plus CMA's mean, for the curve) drives
``--dream-trials`` dreams of ``--rollout-steps`` steps inside M (:mod:`car_racing.dream`): each dream
starts from a real (z, h) state — the cached V mean μ of a recorded frame and M's LSTM state after
reading its memory window up to that frame with the recorded actions — and M samples the next z at
``--temperature``. Fitness = sum of M's predicted rewards (real reward units), ended by M's done head
(``sigmoid(done_logit) > 0.5``; that step's reward counts, later ones do not), averaged over the
trials. All candidates of a generation share the start states and the noise (one generator seeded
from ``--seed`` and the generation), and the population × trials step through M as one batch.

**Real mode** (``--mode real``, the paper's way). Fitness = mean return of ``--real-trials`` real
CarRacing-v3 episodes of at most ``--rollout-steps`` steps (use ``--rollout-steps 1000`` for full
episodes), run by ``--workers`` workers that each load V and M once and are kept for the run: worker
processes on this machine, or with ``--backend ray`` Ray actors on a local Ray or a cluster
(``--ray-address auto``), with identical results (:mod:`car_racing.backends`). All candidates of a
generation drive the same tracks (seeds drawn per generation from ``[eval-seed-base + 10000,
eval-seed-base + 1010000)``). ``--preset paper`` sets the paper's protocol (:attr:`Args.PRESETS`:
population 64, 16 episodes per candidate, checks every 25 generations on 1,024 tracks, 1,800
generations: ~2 M episodes, a job for a cluster); flags given on the command line still win.

**Real-env checks.** Every ``--eval-every`` generations the generation's best candidate and CMA's
mean each drive ``--eval-episodes`` real episodes (at most ``--eval-max-steps`` steps) on the fixed
seeds ``eval-seed-base, eval-seed-base + 1, …`` — the same tracks every time, so scores compare
across generations; pick a base away from the recording seeds (a warning names any overlap). A new
run (with ``--eval-every`` > 0) first checks CMA's initial mean the same way (generation 0), so the
warm start competes too: in M's dream, CMA can drift to a policy M overrates (e.g. steering hard
while M still predicts the recorded rewards) and the checkpoint then keeps the better initial mean.
The checkpoint's ``model_state`` holds the parameters with the best mean real score so far (a tie
goes to the later check); with no check it holds CMA's current mean (``model_source`` says which).

**Warm starts** (``--init``, :data:`WARM_STARTS`; each a function returning CMA's initial mean and a
record of how it was found): ``zero``; ``bc`` fits C to the recorded actions (least squares of the
linear layer's pre-squash outputs on ``[z_t, h_t]`` (z = μ, h from running M over the recorded windows
with the recorded actions), with targets ``atanh(clip(steer, -1+ε, 1-ε))`` for steer and
``logit(clip(a, ε, 1-ε))`` for gas and brake (ε = ``--bc-eps``) and a ridge (``--bc-ridge`` λ on
standardised inputs; the bias is not penalised)); ``dagger`` (:mod:`car_racing.imitation`); ``checkpoint``
(the C of ``--init-from``, its own training record carried along).

**Fitness sources** (``--mode``, :data:`FITNESS_SOURCES`): :class:`DreamFitness` and
:class:`RealEnvFitness`; :class:`Run` composes a warm start and a fitness source (ask, score, tell,
check, save).

**How C was made** is recorded in the checkpoint's ``training`` dict (:func:`training_record`): fitness
source, warm start, generations, whether expert labels (BC, DAgger) or real-env returns as fitness
entered anywhere in its lineage, the dream's settings, and ``dream_trained`` — true only for a C whose
every ancestor was evolved in M's dream from a label-free start, with the real env used only by the
checks that choose what to keep.

**Resume.** ``checkpoints/control_model_cmaes.pth`` is written atomically after every generation with
the CMA-ES state (``es.pickle_dumps()``), the generation, the RNG states, the history and the best
parameters, so ``--resume`` continues the same run (and Ctrl-C loses at most the generation in
progress). ``control_model_cmaes.png`` plots dream fitness and real scores per generation.

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
import math
import functools
import pickle
import random
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from car_racing.agent import checkpoint_paths, make_agent_driver
from car_racing.cli import UsageError, run_main
from car_racing.dream import RecordedStates, dream_rollout, start_pool
from car_racing.imitation import LinearFit, bc_targets, linear_to_flat, run_dagger
from car_racing.latent_cache import file_sha256, load_or_build_latents
from car_racing.models.ffn import Controller, flat_to_population, num_controller_params
from car_racing.models.mdn_rnn import MDNRNN
from car_racing.recorded_data import has_recorded_data, load_memory_sequences, load_recorded
from car_racing.rollout import Backend, EpisodeWorkers, default_workers, uses_backend
from car_racing.runtime import atomic_path, build_model, load_checkpoint, load_model, plot_curves, resolve_device, seed_everything

PLOT_FILE = "control_model_cmaes.png"
DAGGER_PLOT_FILE = "control_model_dagger.png"
DAGGER_STATE_FILE = "control_model_dagger.pth"  # the DAgger aggregate, saved every round (--resume continues it)
PLOT_EVERY = 10  # the PNG is also rewritten at every real-env check and at the end
REAL_TRAIN_SEED_OFFSET = 10_000  # real-mode training seeds start this far above --eval-seed-base
REAL_TRAIN_SEED_RANGE = 1_000_000
DAGGER_SEED_OFFSET = 2_000_000  # DAgger round r uses seeds BASE + 2_000_000 + 1000·r + i


@dataclass
class Args:
    """Evolve the controller C with CMA-ES in M's dream (or the real env) and check it in the real env."""
    mode: Literal["dream", "real"] = "dream"
    """fitness from dreams inside M (fast) or from real-env episodes (the paper's way, slow)"""
    population: int = 32
    """CMA-ES population size (candidates per generation)"""
    sigma0: float = 0.1
    """CMA-ES initial step size"""
    generations: int = 200
    """total generations (with --resume: continue until this many; 0 = only the warm start and its check)"""
    rollout_steps: int = 50
    """steps per dream (dream mode) or the episode step limit (real mode)"""
    dream_trials: int = 16
    """dreams per candidate per generation (shared start states and noise across candidates)"""
    real_trials: int = 2
    """real mode: real episodes per candidate per generation (same tracks for every candidate)"""
    stall_steps: int = 0
    """real mode: a training episode ends after this many steps in a row without a new track tile (the car is
    off the road or lost; its return so far is its fitness), 0 = never; checks always drive whole episodes"""
    temperature: float = 1.0
    """τ for sampling M's next z in dreams (logits / τ, σ·√τ; 0 = most likely component's mean)"""
    dream_dropout: float = 0.0
    """dropout p on M's h before its heads, one mask per dream (Dropout's Dream Land; M trained with
    train_memory.py --dropout); 0 = off"""
    dream_dtype: Literal["float32", "bfloat16"] = "float32"
    """precision of the dream's two large products (M's LSTM and MDN head); bfloat16 is ~2× faster on CPUs
    with bf16 instructions and on GPUs, and keeps the cell state, rewards, C and sampling in float32
    (see car_racing/dream.py)"""
    start_states: int = 8192
    """size of the pool of recorded (z, h) states the dreams start from"""
    dream_start: Literal["recorded", "episode-start"] = "recorded"
    """where dreams start: recorded (z, h) states anywhere in the recorded episodes, or episode-start (the first
    frame of each recorded episode with M's zero state: with --rollout-steps 1000, whole episodes from the start line)"""
    init: Literal["zero", "bc", "dagger", "checkpoint"] = "zero"
    """CMA's initial mean: all-zero parameters, C fitted to the recorded actions (bc: behaviour cloning),
    C fitted by DAgger with the autopilot as the expert in the real env (see car_racing/imitation.py), or
    the C of an existing controller checkpoint (--init-from; e.g. to fine-tune a DAgger C with --mode real)"""
    init_from: Optional[str] = None
    """--init checkpoint: the controller checkpoint to start from (default: CHECKPOINT_DIR/control_model_cmaes.pth,
    which the new run then replaces; its C stays the best unless a real-env check beats it)"""
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
    eval_every: int = 10
    """every this many generations the best candidate and CMA's mean drive real episodes (0 = never)"""
    eval_episodes: int = 4
    """real episodes per real-env check"""
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
    local Ray or a cluster; same results; see the README's "Past one machine: Ray")"""
    ray_address: str = ""
    """--backend ray: empty = start a local Ray with --workers CPUs; auto or HOST:PORT = join a running cluster"""
    preset: Optional[Literal["paper"]] = None
    """paper: the paper's protocol (PRESETS: --mode real, population 64, 16 episodes per candidate of up to 1000
    steps, 1800 generations, checks every 25 generations on 1024 tracks); flags given on the command line win"""
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
    progress: bool = True
    """show tqdm progress bars"""

    # Applied by the command-line parser before the flags (flags given win); from Python: cli.preset_args.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"mode": "real", "population": 64, "real_trials": 16, "rollout_steps": 1000, "generations": 1800,
                  "eval_every": 25, "eval_episodes": 1024, "eval_max_steps": 1000},
    }


def check_args(args: Args) -> None:
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
    if args.eval_episodes >= REAL_TRAIN_SEED_OFFSET:
        raise UsageError(f"--eval-episodes {args.eval_episodes}: expected fewer than {REAL_TRAIN_SEED_OFFSET}")


# --- behaviour cloning warm start -------------------------------------------------------------------

def bc_visitor(fit: LinearFit, eps: float):
    """A :func:`collect_start_states` ``visit`` callback adding every recorded (z_t, h_t) → a_t to ``fit``."""
    def visit(batch: RecordedStates) -> None:
        x = torch.cat([batch.z, batch.h], dim=-1).reshape(-1, batch.z.shape[-1] + batch.h.shape[-1])
        fit.add(x, bc_targets(batch.actions.reshape(-1, batch.actions.shape[-1]).cpu(), eps))
    return visit


# --- real-env fitness (workers kept for the run) ---------------------------------------------------------

class RealFitness:
    """Mean real-env return of each candidate over the given seeds, in workers kept for the whole run
    (:class:`car_racing.rollout.EpisodeWorkers`: processes or Ray actors, each loading V and M once and
    swapping in each candidate's parameters; a generation's candidates reach them once, not per episode).
    The run's real-env checks use the same workers (:meth:`score`): a second set would compete for the
    same cores (and on a Ray cluster wait for CPUs the first set holds)."""

    def __init__(self, checkpoint_dir: str, num_params: int, workers: int, backend: Backend | None = None):
        make_driver = functools.partial(make_agent_driver, str(checkpoint_dir), np.zeros(num_params), "cpu")
        self.workers = EpisodeWorkers(make_driver, workers, backend=backend)

    def returns(self, candidates: Sequence[np.ndarray], seeds: Sequence[int], max_steps: int,
                smoothing: float = 0.0, stall_steps: int = 0) -> np.ndarray:
        """Every candidate's return on every seed, (P, S), in a fixed order whichever episode finishes first."""
        returns = np.zeros((len(candidates), len(seeds)))
        for k, result in self.workers.run(seeds, max_steps, candidates=np.stack([np.asarray(c) for c in candidates]),
                                          smoothing=smoothing, stall_steps=stall_steps):
            returns[divmod(k, len(seeds))] = result.total_reward
        return returns

    def __call__(self, candidates: Sequence[np.ndarray], seeds: Sequence[int], max_steps: int,
                 smoothing: float = 0.0, stall_steps: int = 0) -> np.ndarray:
        """Each candidate's mean return over ``seeds`` (the same on every backend and worker count)."""
        return self.returns(candidates, seeds, max_steps, smoothing, stall_steps).mean(axis=1)

    def score(self, params: np.ndarray, seeds: Sequence[int], max_steps: int, smoothing: float = 0.0
              ) -> tuple[float, float]:
        """Mean and std of C(params)'s returns over ``seeds``."""
        totals = self.returns([params], seeds, max_steps, smoothing)[0]
        return float(totals.mean()), float(totals.std())

    def close(self) -> None:
        self.workers.close()


# --- the run ---------------------------------------------------------------------------------------------

def save_run_checkpoint(checkpoint: dict, path: Path) -> None:
    """:func:`car_racing.runtime.save_checkpoint` with pickle protocol 5: the tens of MB of CMA-ES state
    (bytes) are written about 5× faster than with torch's default protocol (this runs every generation)."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp, pickle_protocol=5)


def generation_generator(seed: int, generation: int) -> torch.Generator:
    """The CPU generator of one generation's dreams (start states and noise): same for every candidate."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, generation]).generate_state(1)[0]))


def rng_states() -> dict[str, Any]:
    """Python, numpy (global: pycma uses it besides its own ``randn``) and torch RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def make_es(x0: np.ndarray, args: Args):
    import cma

    options = {"popsize": args.population, "seed": args.seed + 1,  # pycma: seed 0 would mean "time"
               "verbose": -9, "randn": np.random.RandomState(args.seed % 2**32).randn}
    if args.cma_diagonal:
        options["CMA_diagonal"] = True
    return cma.CMAEvolutionStrategy(np.asarray(x0, dtype=np.float64), args.sigma0, options)


def real_score(params: np.ndarray, args: Args, episodes: RealFitness) -> tuple[float, float]:
    """Mean and std of real-env returns of C(params) on the fixed check seeds, in the run's workers."""
    seeds = [args.eval_seed_base + i for i in range(args.eval_episodes)]
    return episodes.score(params, seeds, args.eval_max_steps, args.smoothing)


DAGGER_SETTINGS = ("dagger_episodes", "dagger_noise", "bc_ridge", "bc_eps", "eval_seed_base", "eval_max_steps",
                   "smoothing")  # a continued DAgger run must keep these


def load_dagger_state(checkpoint_dir: Path, args: Args, models_used: dict) -> dict | None:
    """The saved DAgger run to continue (``--resume --init dagger``), or None when there is none."""
    path = checkpoint_dir / DAGGER_STATE_FILE
    if not (args.resume and args.init == "dagger" and path.is_file()):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UsageError(f"{path}: not a readable DAgger state ({type(err).__name__}); delete it to start over") from None
    if state.get("models") != models_used:
        raise UsageError(f"{path}: the DAgger run used other V/M checkpoints; delete it or drop --resume")
    for key in DAGGER_SETTINGS:
        if state["config"].get(key) != getattr(args, key):
            raise UsageError(f"--{key.replace('_', '-')} {getattr(args, key)}: the saved DAgger run used "
                             f"{state['config'].get(key)}; pass the same value or drop --resume")
    return state


def dagger_warm_start(checkpoint_dir: Path, num_params: int, args: Args, models_used: dict,
                      resume: dict | None = None) -> tuple[np.ndarray, dict]:
    """C fitted by DAgger (:func:`car_racing.imitation.run_dagger`); returns (flat params, summary).

    The aggregate and the rounds are saved atomically to CHECKPOINT_DIR/control_model_dagger.pth after
    every round (``resume`` continues from it), with a plot of each round's returns."""
    def seeds(round_index: int) -> list[int]:
        first = args.eval_seed_base + DAGGER_SEED_OFFSET + 1000 * round_index
        return list(range(first, first + args.dagger_episodes))

    def report(record, state: dict) -> None:
        returns = np.asarray(record.returns)
        print(f"DAgger round {record.round} ({record.driver} drove): return {returns.mean():.1f} ± {returns.std():.1f} "
              f"(min {returns.min():.1f}) over {len(returns)} episodes; refit on {record.samples} pairs, "
              f"pre-squash R² steer/gas/brake {' / '.join(f'{r:.2f}' for r in record.target_r2)}", flush=True)
        save_run_checkpoint({**state, "config": {key: getattr(args, key) for key in DAGGER_SETTINGS},
                             "models": models_used, "seconds": seconds + time.time() - started},
                            checkpoint_dir / DAGGER_STATE_FILE)
        rounds = state["rounds"]
        x = {name: [r["round"] for r in rounds] for name in ("mean return of the round's episodes", "min return")}
        plot_curves({"mean return of the round's episodes": [float(np.mean(r["returns"])) for r in rounds],
                     "min return": [float(np.min(r["returns"])) for r in rounds]},
                    checkpoint_dir / DAGGER_PLOT_FILE, title="DAgger (round 0: noisy autopilot; then C drives)",
                    xlabel="round", ylabel="real-env return", x=x)

    started, seconds = time.time(), float(resume.get("seconds", 0.0)) if resume else 0.0
    if resume is not None:
        print(f"continuing the DAgger run in {checkpoint_dir / DAGGER_STATE_FILE} after round {len(resume['rounds']) - 1}")
    history = run_dagger(checkpoint_dir, num_params, args.dagger_rounds, args.dagger_episodes, seeds,
                         ridge=args.bc_ridge, eps=args.bc_eps, expert_noise=args.dagger_noise,
                         max_steps=args.eval_max_steps, smoothing=args.smoothing, workers=args.workers,
                         backend=Backend.from_args(args), resume=resume, on_round=report)
    summary = {"method": "dagger", "ridge": args.bc_ridge, "eps": args.bc_eps, "noise": args.dagger_noise,
               "samples": history[-1].samples, "target_r2": history[-1].target_r2,
               "seconds": seconds + time.time() - started,
               "rounds": [{k: v for k, v in dataclasses.asdict(r).items() if k != "params"} for r in history]}
    return history[-1].params, summary


def plot_history(history: dict[str, list], path: Path, mode: str) -> None:
    label = "dream" if mode == "dream" else "real-env training"
    curves = {f"{label} fitness, best candidate": history["fitness_best"],
              f"{label} fitness, population mean": history["fitness_mean"]}
    x = {name: history["generation"] for name in curves}
    if mode == "dream":
        curves[f"{label} fitness, CMA mean"] = history["fitness_cma_mean"]
        x[f"{label} fitness, CMA mean"] = history["generation"]
    for key, name in (("real_best_candidate", "real score, best candidate"), ("real_cma_mean", "real score, CMA mean")):
        curves[name] = history[key]
        x[name] = history["eval_generation"]
    plot_curves(curves, path, title=f"controller CMA-ES ({mode} mode)", xlabel="generation", ylabel="return", x=x)


# --- setup: the models this run trains against -------------------------------------------------------

@dataclass
class Setup:
    """What every part of a run shares: V/M files, M itself, sizes, and (lazily) the dream start pool."""

    args: Args
    device: torch.device
    checkpoint_dir: Path
    paths: dict[str, Path]
    mdnrnn: MDNRNN
    reward_scale: float
    models_used: dict
    sizes: tuple[int, int, int]
    pool: Any = None  # StartStates on ``device`` once loaded (dream fitness, --init bc)
    real: RealFitness | None = None  # the run's real-env workers, started at first use (close_real ends them)

    def real_episodes(self) -> RealFitness:
        """The workers of every real episode of the run after the warm start (--mode real fitness, checks)."""
        if self.real is None:
            self.real = RealFitness(str(self.checkpoint_dir), self.num_params, self.args.workers,
                                    Backend.from_args(self.args))
        return self.real

    def close_real(self) -> None:
        if self.real is not None:
            self.real.close()
            self.real = None

    @property
    def model_args(self) -> dict:
        return dict(zip(("latent_size", "hidden_size", "action_size"), self.sizes))

    @property
    def num_params(self) -> int:
        return num_controller_params(*self.sizes)

    @property
    def out_path(self) -> Path:
        return self.paths["controller"]


def load_setup(args: Args) -> Setup:
    """Load M (and check V beside it) from ``--checkpoint-dir``; one-line errors for missing or unfit files."""
    device = resolve_device(args.device)
    checkpoint_dir = Path(args.checkpoint_dir)
    paths = checkpoint_paths(checkpoint_dir)
    memory_checkpoint = load_checkpoint(paths["memory"], "memory")
    mdnrnn = build_model(MDNRNN, memory_checkpoint, paths["memory"]).float().to(device).eval()
    reward_scale = float(memory_checkpoint.get("reward", {}).get("scale", 1.0))  # M predicts reward × scale
    load_checkpoint(paths["vision"], "vision")  # one-line error if V is missing (dream latents, real episodes)
    models_used = {kind: {"path": str(paths[kind]), "sha256": file_sha256(paths[kind])} for kind in ("vision", "memory")}
    trained_on = memory_checkpoint.get("vision", {}).get("sha256")
    if trained_on is not None and trained_on != models_used["vision"]["sha256"]:
        raise UsageError(f"{paths['memory']}: M was trained on a different V than {paths['vision']}; "
                         f"rerun car_racing/train_memory.py")
    sizes = (mdnrnn.latent_size, mdnrnn.hidden_size, mdnrnn.action_size)
    return Setup(args, device, checkpoint_dir, paths, mdnrnn, reward_scale, models_used, sizes)


def load_start_pool(setup: Setup, fit: LinearFit | None = None) -> None:
    """Fill ``setup.pool`` with ``--start-states`` recorded (z, h) states (M run over the recorded windows);
    with ``fit``, every recorded (z, h) → action pair is added to it in the same pass (--init bc)."""
    args, mdnrnn = setup.args, setup.mdnrnn
    mu, _ = load_or_build_latents(args.data_dir, setup.paths["vision"], setup.device, args.batch_size,
                                  progress=args.progress)
    if mu.shape[1] != mdnrnn.latent_size:
        raise UsageError(f"{setup.paths['memory']}: M expects latent size {mdnrnn.latent_size} but V encodes "
                         f"{mu.shape[1]}; rerun car_racing/train_memory.py")
    sequences = load_memory_sequences(args.data_dir)
    if len(sequences.indices) == 0:
        raise UsageError(f"--data-dir {args.data_dir}: no memory sequences; record more data")
    started = time.time()
    episode_starts = [int(e["start"]) for e in load_recorded(args.data_dir, mmap=True).episodes]
    pool = start_pool(args.dream_start, mdnrnn, mu, sequences.indices, sequences.actions, episode_starts,
                      args.start_states, np.random.default_rng([args.seed, 1]), device=setup.device,
                      batch_size=args.batch_size, visit=bc_visitor(fit, args.bc_eps) if fit else None)
    print(f"{len(pool)} dream start states ({args.dream_start}) from {sequences.indices.size} recorded steps "
          f"({time.time() - started:.1f}s)")
    setup.pool = pool.to(setup.device)


# --- warm starts: CMA's initial mean ---------------------------------------------------------------------
# Each returns (flat parameters, a record of how they were found: method, source, whether expert labels
# were used); the record goes into the checkpoint's "bc" (historical name) and "training" entries.

def zero_start(setup: Setup, dagger_state: dict | None) -> tuple[np.ndarray, dict]:
    """All-zero parameters: steer 0, gas and brake 0.5 (the paper's start; no knowledge at all)."""
    return np.zeros(setup.num_params), {"method": "zero", "expert_labels": False}


def bc_start(setup: Setup, dagger_state: dict | None) -> tuple[np.ndarray, dict]:
    """C fitted by least squares to the recorded drivers' actions (module docstring)."""
    args = setup.args
    fit = LinearFit(setup.mdnrnn.latent_size + setup.mdnrnn.hidden_size, setup.mdnrnn.action_size)
    load_start_pool(setup, fit)
    weight, bias = fit.solve(args.bc_ridge)
    info = {"method": "bc", "expert_labels": True, "samples": fit.count, "ridge": args.bc_ridge, "eps": args.bc_eps,
            "target_mse": fit.residual_mse(weight, bias).tolist(), "target_r2": fit.r2(weight, bias).tolist()}
    print(f"--init bc: least-squares fit of C on {fit.count} recorded steps; pre-squash target R² "
          f"steer/gas/brake {' / '.join(f'{r:.2f}' for r in info['target_r2'])}")
    return linear_to_flat(weight, bias), info


def dagger_start(setup: Setup, dagger_state: dict | None) -> tuple[np.ndarray, dict]:
    """C fitted by DAgger with the autopilot as the expert (:func:`dagger_warm_start`)."""
    x0, info = dagger_warm_start(setup.checkpoint_dir, setup.num_params, setup.args, setup.models_used, dagger_state)
    return x0, {**info, "expert_labels": True}


def checkpoint_start(setup: Setup, dagger_state: dict | None) -> tuple[np.ndarray, dict]:
    """The C of an existing controller checkpoint (``--init-from``); its training record is carried along."""
    source = Path(setup.args.init_from) if setup.args.init_from else setup.out_path
    start_controller, start = load_model(source, "controller")
    if start["model_args"] != setup.model_args:
        raise UsageError(f"--init-from {source}: controller sizes {start['model_args']} do not fit M {setup.model_args}")
    print(f"--init checkpoint: CMA starts from C in {source} ({start.get('model_source', 'no source recorded')})")
    source_training = start.get("training")
    return start_controller.get_flat_params(), {
        "method": "checkpoint", "from": str(source), "source_model": start.get("model_source"),
        "source_real_score": start.get("best_real_score"), "source_warm_start": start.get("bc"),
        "source_training": source_training,
        # unknown history (an older checkpoint without a record) counts as possibly expert-labelled
        "expert_labels": True if source_training is None else bool(source_training.get("expert_labels", True))}


WARM_STARTS = {"zero": zero_start, "bc": bc_start, "dagger": dagger_start, "checkpoint": checkpoint_start}


# --- fitness sources: what a generation's candidates are scored by --------------------------------------

class DreamFitness:
    """Mean fitness of each candidate over ``--dream-trials`` dreams in M (see the module docstring); the
    CMA mean drives the same dreams, for the curve."""

    name = "dream"

    def __init__(self, setup: Setup):
        if setup.pool is None:
            load_start_pool(setup)
        self.setup = setup

    def __call__(self, candidates: list[np.ndarray], mean: np.ndarray, generation: int) -> tuple[np.ndarray, float]:
        setup, args = self.setup, self.setup.args
        generator = generation_generator(args.seed, generation)
        start_z, start_state = setup.pool.pick(args.dream_trials, generator)
        flat = torch.as_tensor(np.stack(candidates + [mean]), dtype=torch.float32, device=setup.device)
        weights, biases = flat_to_population(flat, *setup.sizes)
        fitness = dream_rollout(setup.mdnrnn, weights, biases, start_z, start_state, args.rollout_steps,
                                args.temperature, generator, reward_scale=1.0 / setup.reward_scale,
                                dtype=args.dream_dtype, dropout=args.dream_dropout)
        fitness = fitness.mean(dim=1).double().cpu().numpy()
        return fitness[:-1], float(fitness[-1])

    def close(self) -> None:
        pass


class RealEnvFitness:
    """Mean real-env return of each candidate over ``--real-trials`` tracks drawn per generation (all
    candidates drive the same tracks), in a worker pool kept for the whole run."""

    name = "real"

    def __init__(self, setup: Setup):
        self.args = setup.args
        self.episodes = setup.real_episodes()

    def __call__(self, candidates: list[np.ndarray], mean: np.ndarray, generation: int) -> tuple[np.ndarray, float]:
        args = self.args
        rng = np.random.default_rng([args.seed, generation])
        seeds = args.eval_seed_base + REAL_TRAIN_SEED_OFFSET + rng.choice(REAL_TRAIN_SEED_RANGE, args.real_trials,
                                                                          replace=False)
        return self.episodes(candidates, seeds.tolist(), args.rollout_steps, args.smoothing, args.stall_steps), math.nan

    def close(self) -> None:
        pass  # the workers are the run's (Setup.close_real)


FITNESS_SOURCES = {"dream": DreamFitness, "real": RealEnvFitness}


def training_record(args: Args, warm_start: dict | None, generation: int) -> dict:
    """How this C was made, for a reader to check from the file: fitness source, warm start (and its own
    record, recursively), generations, whether any expert label or real-env return shaped it, and the
    dream's settings. ``dream_trained``: no expert labels anywhere in the lineage and no real-env return ever
    used as fitness (real-env checks only choose what to keep). ``reward_only``: no expert labels anywhere —
    C learnt from rewards alone, dreamt or real (the paper's setting); ``real_fitness_episodes`` counts the
    real episodes whose returns were fitness, over the lineage."""
    warm_start = warm_start or {"method": args.init}
    source = warm_start.get("source_training") or {}
    expert = bool(warm_start.get("expert_labels", args.init != "zero"))
    real_fitness = args.mode == "real" and generation > 0 or bool(source.get("real_returns_as_fitness", False))
    real_episodes = generation * args.population * args.real_trials if args.mode == "real" else 0
    record = {"fitness_source": args.mode, "warm_start": args.init, "generations": generation,
              "expert_labels": expert, "real_returns_as_fitness": real_fitness,
              "dream_trained": not expert and not real_fitness,
              # the paper's rule: C learnt from rewards alone (real or dreamt), no expert label anywhere in the lineage
              "reward_only": not expert,
              "real_fitness_episodes": real_episodes + int(source.get("real_fitness_episodes", 0)),
              "real_checks": {"every": args.eval_every, "episodes": args.eval_episodes, "seed_base": args.eval_seed_base,
                              "role": "choose which parameters to keep, never fitness"},
              "total_generations": generation + int(source.get("total_generations", 0))}
    if args.mode == "real":
        record["real"] = {"trials": args.real_trials, "rollout_steps": args.rollout_steps, "population": args.population,
                          "sigma0": args.sigma0, "diagonal": args.cma_diagonal, "smoothing": args.smoothing,
                          "stall_steps": args.stall_steps,
                          "seed_range": [args.eval_seed_base + REAL_TRAIN_SEED_OFFSET,
                                         args.eval_seed_base + REAL_TRAIN_SEED_OFFSET + REAL_TRAIN_SEED_RANGE]}
    if args.mode == "dream":
        record["dream"] = {"rollout_steps": args.rollout_steps, "trials": args.dream_trials,
                           "temperature": args.temperature, "dropout": args.dream_dropout,
                           "start_states": args.start_states, "start": args.dream_start, "data_dir": args.data_dir}
    if source:
        record["warm_start_training"] = source
    return record


def validate_resume(state: dict, setup: Setup) -> None:
    """One-line errors when a saved run cannot continue with these flags and models."""
    args, out_path = setup.args, setup.out_path
    if "es_state" not in state:
        raise UsageError(f"{out_path}: holds no CMA-ES state to resume; drop --resume to start a new run")
    for kind in ("vision", "memory"):
        if state.get("models", {}).get(kind, {}).get("sha256") != setup.models_used[kind]["sha256"]:
            raise UsageError(f"{out_path}: the run used a different {kind} checkpoint than {setup.paths[kind]}; "
                             f"drop --resume to start over")
    for key in ("population", "mode"):
        if state["config"].get(key) != getattr(args, key):
            raise UsageError(f"--{key} {getattr(args, key)}: the resumed run used {state['config'].get(key)}; "
                             f"pass the same value or drop --resume")
    if state["model_args"] != setup.model_args:
        raise UsageError(f"{out_path}: controller sizes {state['model_args']} do not fit M {setup.model_args}")


def warn_check_seed_overlap(args: Args) -> None:
    if has_recorded_data(args.data_dir):
        recorded_seeds = {int(e["seed"]) for e in load_recorded(args.data_dir, mmap=True).episodes}
        overlap = recorded_seeds & set(range(args.eval_seed_base, args.eval_seed_base + args.eval_episodes))
        if overlap:
            print(f"warning: --eval-seed-base {args.eval_seed_base}: check seeds {sorted(overlap)[:5]} are also "
                  f"recording seeds", file=sys.stderr)


HISTORY_KEYS = ("generation", "fitness_best", "fitness_mean", "fitness_cma_mean", "sigma", "seconds", "eval_generation",
                "real_best_candidate", "real_cma_mean", "real_best_candidate_std", "real_cma_mean_std")


class Run:
    """One CMA-ES run's state: the ES, the history, the best real-checked parameters; saved every generation."""

    def __init__(self, setup: Setup, es: Any, warm_start: dict | None, generation: int = 0,
                 history: dict | None = None, best_real_score: float | None = None,
                 best_params: np.ndarray | None = None, model_source: str = "cma_mean (no real-env check yet)",
                 checked: list[dict] | None = None):
        self.setup, self.es, self.warm_start, self.generation = setup, es, warm_start, generation
        self.history = {key: list((history or {}).get(key, [])) for key in HISTORY_KEYS}
        self.best_real_score, self.best_params, self.model_source = best_real_score, best_params, model_source
        # every real-checked parameter set with its check score: select_controller.py re-ranks them on more tracks
        self.checked = list(checked or [])
        # wall clock of the run so far (history["seconds"], per generation, across resumes): the compute it took
        self._clock_base, self._clock_start = (self.history["seconds"] or [0.0])[-1], time.time()

    @classmethod
    def resume(cls, setup: Setup) -> "Run":
        state = load_checkpoint(setup.out_path, "controller")
        validate_resume(state, setup)
        restore_rng_states(state["rng_state"])
        print(f"resuming {setup.out_path} after generation {int(state['generation'])}")
        return cls(setup, pickle.loads(state["es_state"]), state.get("bc"), int(state["generation"]),
                   state["history"], state.get("best_real_score"), state.get("best_params"),
                   state.get("model_source", "cma_mean (no real-env check yet)"), state.get("checked"))

    @classmethod
    def start(cls, setup: Setup, x0: np.ndarray, warm_start: dict | None) -> "Run":
        """A new run from ``x0``; with checks on, the warm start is real-checked first (generation 0)."""
        args = setup.args
        run = cls(setup, make_es(x0, args), warm_start)
        if args.eval_every:  # the warm start is a candidate for the best real score too
            score, spread = real_score(x0, args, setup.real_episodes())
            run.keep_if_best(score, x0, f"initial mean ({args.init}) of generation 0 (real score {score:.1f})", spread)
            print(f"generation 0: real score of CMA's initial mean ({args.init}) {score:.1f} ± {spread:.1f} "
                  f"over {args.eval_episodes} episodes")
        run.save()
        return run

    def keep_if_best(self, score: float, params: np.ndarray, source: str, spread: float = math.nan) -> None:
        self.checked.append({"generation": self.generation, "source": source, "score": float(score),
                             "std": float(spread), "params": np.asarray(params, dtype=np.float32)})
        if self.best_real_score is None or score >= self.best_real_score:  # a tie goes to the later check
            self.best_real_score, self.best_params = score, np.array(params, dtype=np.float64)
            self.model_source = source

    def checkpoint(self) -> dict:
        setup, args = self.setup, self.setup.args
        controller = Controller(*setup.sizes)
        controller.set_flat_params(self.best_params if self.best_params is not None else self.es.mean)
        return {"kind": "controller", "model_args": setup.model_args, "model_state": controller.state_dict(),
                "model_source": self.model_source, "best_params": self.best_params,
                "best_real_score": self.best_real_score, "checked": self.checked, "es_state": self.es.pickle_dumps(),
                "generation": self.generation, "history": self.history, "rng_state": rng_states(),
                "config": dataclasses.asdict(args), "models": setup.models_used, "bc": self.warm_start,
                "training": training_record(args, self.warm_start, self.generation),
                "reward_scale": setup.reward_scale}

    def save(self) -> None:
        save_run_checkpoint(self.checkpoint(), self.setup.out_path)

    def check(self, best_candidate: np.ndarray) -> float:
        """Real-env check of the generation's best candidate and CMA's mean; keeps the best; returns the
        best candidate's score."""
        args, generation = self.setup.args, self.generation
        scores = {}
        for name, params in (("best_candidate", best_candidate), ("cma_mean", np.array(self.es.mean))):
            scores[name] = real_score(params, args, self.setup.real_episodes())
            self.keep_if_best(scores[name][0], params, f"{name} of generation {generation} (real score {scores[name][0]:.1f})",
                              scores[name][1])
        self.history["eval_generation"].append(generation)
        for name, (mean, std) in scores.items():
            self.history[f"real_{name}"].append(mean)
            self.history[f"real_{name}_std"].append(std)
        (tqdm.write if args.progress else print)(
            f"generation {generation}: real score best candidate {scores['best_candidate'][0]:.1f} "
            f"± {scores['best_candidate'][1]:.1f}, CMA mean {scores['cma_mean'][0]:.1f} "
            f"± {scores['cma_mean'][1]:.1f} over {args.eval_episodes} episodes; best so far {self.best_real_score:.1f}")
        return scores["best_candidate"][0]

    def evolve(self, fitness_source: Any) -> None:
        """Generations up to ``--generations``: ask, score, tell, check every ``--eval-every``, save."""
        args, es, history = self.setup.args, self.es, self.history
        bar = tqdm(range(self.generation, args.generations), desc=f"CMA-ES ({args.mode})", unit="gen",
                   initial=self.generation, total=args.generations, disable=not args.progress)
        last_real = history["real_best_candidate"][-1] if history["real_best_candidate"] else None
        try:
            for generation in bar:
                candidates = [np.asarray(x) for x in es.ask()]
                fitness, mean_fitness = fitness_source(candidates, np.asarray(es.mean), generation)
                es.tell(candidates, (-fitness).tolist())  # pycma minimises
                best = int(np.argmax(fitness))
                self.generation = generation + 1
                for key, value in (("generation", generation + 1), ("fitness_best", float(fitness[best])),
                                   ("fitness_mean", float(fitness.mean())), ("fitness_cma_mean", mean_fitness),
                                   ("sigma", float(es.sigma)),
                                   ("seconds", self._clock_base + time.time() - self._clock_start)):
                    history[key].append(value)
                checked = bool(args.eval_every) and self.generation % args.eval_every == 0
                if checked:
                    last_real = self.check(candidates[best])
                self.save()
                if checked or self.generation % PLOT_EVERY == 0 or self.generation == args.generations:
                    plot_history(history, self.setup.checkpoint_dir / PLOT_FILE, args.mode)
                bar.set_postfix(best=f"{fitness[best]:.2f}", mean=f"{fitness.mean():.2f}",
                                real="-" if last_real is None else f"{last_real:.1f}")
        finally:
            bar.close()


@uses_backend
def main(args: Args) -> dict:
    """Evolve C (module docstring); returns the final checkpoint dict (also in CHECKPOINT_DIR)."""
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    setup = load_setup(args)
    try:
        return evolve_controller(setup)
    finally:
        setup.close_real()


def evolve_controller(setup: Setup) -> dict:
    """The warm start (or the saved run), the generations, the final report: :func:`main` after loading."""
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


if __name__ == "__main__":
    run_main(main, Args)
