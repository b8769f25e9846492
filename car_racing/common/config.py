"""The whole recipe in one typed config: one set of defaults, named presets as data, one flag per field.

A :class:`Config` has one section per part of the recipe — ``run`` (where and how: paths, seed, device,
workers), ``record`` (stage 1), ``vision`` (stage 2), ``memory`` (stage 3), ``dream`` (how C is scored inside
M), ``cmaes`` (the evolution of C and its warm start), ``checks`` (the real-env checks that choose what to keep)
and ``loop`` (stage 4's repair loop and its final choice). The defaults are the recipe this repository
recommends; :data:`PRESETS` holds the named alternatives (``seed``: the seed repository's settings, ``demo``:
the quick pipeline of ``make demo``, ``paper``: the paper's real-env CMA-ES) as data, here and nowhere else.

Where a value comes from, later wins: the defaults, the preset (``--preset NAME``, or a file's ``preset``), a
config file (``--config FILE``, TOML with one table per section), the command line. A stage's command line has
one flag per field of the sections it reads: ``--seed`` and ``--data-dir`` for ``run``, ``--dream.trials`` for
``dream.trials`` (the same key as in the file). Every stage writes the fully resolved config beside its
outputs, and ``--config`` of that file reruns it with exactly those values.

Bad input — an unknown key, a wrong type, a value out of range, a preset that does not exist — is a
:class:`ConfigError` naming the key (one line, exit 2, raised before a stage writes anything).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Literal, Mapping, Sequence, get_args, get_origin

from car_racing.common.cli import (
    USAGE_EXIT_CODE,
    OneLineErrorParser,
    UsageError,
    field_docstrings,
    flag_kwargs,
    report_errors,
)

CONFIG_SUFFIX = ".config.toml"  # a stage's resolved config: CHECKPOINT_DIR/<stage>.config.toml


class ConfigError(UsageError):
    """A config value, key, file or preset that cannot be used: one line naming it, exit code 2."""

    def __init__(self, message: str, key: str = "", expected: str = ""):
        super().__init__(message)
        self.key, self.expected = key, expected  # the key whose value is out of range and its range (validate)


# --- the sections ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Where a stage reads and writes, and how it runs (none of these change what is learnt, except ``seed``)."""

    seed: int = 0
    """one seed for random, numpy, torch and the env resets of every stage (each derives its own from it)"""
    data_dir: str = "data"
    """the recording: stage 1 writes it; V, M and C's dream start states read it"""
    checkpoint_dir: str = "checkpoints"
    """V, M and C (vision_model.pth, memory_model.pth, control_model_cmaes.pth), their PNGs and resolved configs"""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda[:N] for V, M and the dreams; real episodes run on the CPU"""
    threads: int = 0
    """torch CPU threads (0 = torch's default; 1 is faster on a machine busy with other jobs)"""
    workers: int = 0
    """workers for real-env episodes: processes, or Ray actors with --backend ray (0 = the cores this process may
    use; the results do not depend on it)"""
    backend: Literal["processes", "ray"] = "processes"
    """where real-env episodes run: processes on this machine, or ray (actors on a local Ray or a cluster; same
    results; docs/scaling-with-ray.md)"""
    ray_address: str = ""
    """--backend ray: auto or HOST:PORT = join a running cluster; empty = the cluster in RAY_ADDRESS when that is
    set, else a private local Ray for this run"""
    resume: bool = False
    """continue the stage's saved run in CHECKPOINT_DIR (a stage interrupted by Ctrl-C or a crash)"""
    progress: bool = True
    """show tqdm progress bars with an ETA"""
    tensorboard: bool = False
    """also write TensorBoard events (needs: pip install -r requirements-tensorboard.txt)"""

    USER: ClassVar[tuple[str, ...]] = ("seed", "data_dir", "checkpoint_dir", "device", "workers", "backend", "resume")


@dataclass(frozen=True)
class Record:
    """Stage 1: who drives, how many episodes, how long."""

    driver: Literal["human", "autopilot", "random", "agent", "keyboard"] = "human"
    """human (keyboard or gamepad), autopilot (the scripted driver with noise: the headless stand-in for a
    person), random, agent (the C in CHECKPOINT_DIR with exploration noise), or keyboard (a headless stand-in
    for a person at the arrow keys: keys held or not, a reaction delay, mistakes; docs/driving.md)"""
    episodes: int = 64
    """episodes of the driver"""
    random_episodes: int = 16
    """random-driver episodes added after them (M sees the car off the road)"""
    random_style: Literal["brownian", "driving"] = "brownian"
    """the random driver's actions: brownian (gas and brake wander together: the car mostly stands or crawls) or
    driving (the gas on, no brake, a slowly wandering steering: the car misses bends at speed)"""
    steps: int = 1000
    """steps per episode (the env's own limit is 1000)"""
    noise: float = 1.0
    """the autopilot's (or agent's) noise level (0 = clean; docs/driving.md)"""
    holds: float = 0.0
    """driver autopilot: how often per 1000 steps it holds one action for 40–100 steps (straight on, a steering
    angle or coasting) before recovering, so M sees the car miss a corner at speed (0 = never; docs/stages.md)"""
    seq_len: int = 100
    """steps per training window of M"""
    input: Literal["auto", "keyboard", "gamepad"] = "auto"
    """driver human: keyboard, gamepad, or auto (a gamepad when one is plugged in)"""
    append: bool = False
    """add to the recording in DATA_DIR instead of starting a new one"""
    reaction_steps: int = 10
    """driver keyboard: its reaction delay in env steps (50 per second: 10 = 0.2 s)"""
    mistakes: float = 0.2
    """driver keyboard: the chance of a mistake (braking late, turning in late or too long) at each braking point
    and each corner"""
    rescue: int = 0
    """driver agent: after this many steps running with 3 or more wheels on the grass the autopilot drives the
    car back to the road, then C drives on (0 = never; the loop's C episodes use loop.agent_rescue)"""

    USER: ClassVar[tuple[str, ...]] = ("driver", "episodes", "random_episodes", "steps", "noise", "input", "append")


@dataclass(frozen=True)
class Vision:
    """Stage 2: V, the ConvVAE that turns a frame into z."""

    epochs: int = 6
    """passes over the recorded frames"""
    batch_size: int = 100
    """frames per gradient step"""
    lr: float = 1e-4
    """Adam's learning rate"""
    kl_anneal_epochs: float = 3.0
    """epochs over which the KL weight β rises from 0 to 1"""
    free_bits: float = 0.5
    """nats of KL per latent dimension not penalised (0 = the seed's plain KL)"""
    latent_size: int = 32
    """size of z"""
    val_fraction: float = 0.1
    """share of the episodes held out for validation"""
    channels_last: bool = True
    """channels-last memory layout on the CPU (faster convolutions)"""
    bf16: bool = True
    """bfloat16 autocast where the CPU or GPU runs it fast"""
    compile: bool = False
    """torch.compile V (slow to start; pays off on long runs)"""

    USER: ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "lr", "kl_anneal_epochs", "free_bits")


@dataclass(frozen=True)
class Memory:
    """Stage 3: M, the MDN-RNN that predicts the next z, the reward, the end of the episode and its value."""

    epochs: int = 25
    """passes over the recorded windows"""
    batch_size: int = 32
    """windows per gradient step"""
    lr: float = 1e-3
    """Adam's learning rate"""
    grad_clip: float = 5.0
    """gradient-norm clip"""
    hidden_size: int = 512
    """LSTM units (h)"""
    num_mixtures: int = 5
    """Gaussians in the MDN head"""
    dropout: float = 0.05
    """dropout on h before M's heads (Dropout's Dream Land); the dreams can then sample one mask per dream"""
    latents: Literal["sample", "mean"] = "sample"
    """what M reads and predicts: a z ~ N(μ, σ²) of V drawn anew each epoch (the paper's), or V's mean μ, which is
    what C sees in the real env (a dream of M's samples then shows C the z it will see there)"""
    value_discount: float = 0.98
    """γ of M's value head (0 = no value head): the dream's value bootstrap needs it"""
    reward_weight: float = 1.0
    """weight of the reward loss"""
    done_weight: float = 1.0
    """weight of the done loss"""
    reward_clip: float = 10.0
    """rewards are clipped to ±this before M learns them"""
    done_target: Literal["terminal", "episode-end"] = "terminal"
    """what counts as done: the env's terminal steps only, or every episode's last step"""
    done_pos_weight: float = 1.0
    """weight of the positive (done) class in the done loss"""
    value_weight: float = 1.0
    """weight of the value loss"""
    val_fraction: float = 0.1
    """share of the episodes held out for validation"""
    encode_batch_size: int = 256
    """frames per batch when V encodes the recording into z"""
    vision_checkpoint: str = ""
    """the V whose z M learns (empty = CHECKPOINT_DIR/vision_model.pth)"""
    init_from: str = ""
    """start from this memory checkpoint's weights instead of from scratch (empty = from scratch)"""
    freeze_lstm: bool = False
    """train only M's heads (h stays as it is: a C evolved on it drives the same)"""

    USER: ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "lr", "dropout", "value_discount")


@dataclass(frozen=True)
class Dream:
    """How a candidate C is scored inside M's dream (CMA-ES fitness, the repair step, the films, the panel)."""

    steps: int = 200
    """steps per dream: short dreams from recorded states, ended on M's value (whole 1000-step dreams from the
    start line are exploited: docs/dream-repair.md)"""
    trials: int = 40
    """dreams per candidate per generation (shared start states and noise across candidates)"""
    temperature: float = 1.0
    """τ for sampling M's next z (logits / τ, σ·√τ; 0 = the most likely component's mean)"""
    dropout: float = 0.1
    """dropout p on M's h before its heads, one mask per dream (Dropout's Dream Land; 0 = off)"""
    value: bool = True
    """end each dream still alive after --dream.steps on M's value of its last state (Dreamer's bootstrap; needs
    M's value head)"""
    fitness: Literal["mean", "quantile", "mean-minus-std"] = "mean"
    """a candidate's fitness from its dreams: their mean, a lower quantile (--dream.fitness-q) or mean − k·std
    (--dream.fitness-k); measured: around a working C the quantile ranks its neighbours backwards where the mean
    ranks them as the real env does (docs/dream-repair.md)"""
    fitness_q: float = 0.25
    """--dream.fitness quantile: the quantile q in [0, 1] of the dreams' returns"""
    fitness_k: float = 1.0
    """--dream.fitness mean-minus-std: k ≥ 0"""
    start: Literal["recorded", "episode-start"] = "recorded"
    """where dreams start: recorded (z, h) states anywhere in the recording, or episode-start (each recorded
    episode's first frame with M's zero state; with --dream.steps 1000, whole episodes: measured exploited, the
    dream paid 732–1,421 where the real env paid −44 to −84, docs/dream-repair.md)"""
    start_states: int = 8192
    """size of the pool of recorded (z, h) states the dreams start from"""
    start_drivers: tuple[str, ...] = ()
    """take start states only from episodes of these drivers (e.g. agent); empty = all"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """precision of the dream's two large products (M's LSTM and MDN head); bfloat16 is ~2× faster where the
    hardware has bf16"""
    batch_size: int = 256
    """windows per batch when M runs over the recording to collect start states"""

    USER: ClassVar[tuple[str, ...]] = ("steps", "trials", "dropout", "value", "fitness")


@dataclass(frozen=True)
class Cmaes:
    """The evolution of C (linear on [z, h]) with CMA-ES, and where it starts."""

    mode: Literal["dream", "real"] = "dream"
    """fitness from dreams inside M (the World Models way) or from real-env episodes (the paper's CarRacing run)"""
    population: int = 32
    """candidates per generation"""
    sigma0: float = 0.1
    """initial step size of a run from zero (or from --cmaes.init)"""
    generations: int = 15
    """generations (in the repair loop: per iteration and start)"""
    diagonal: bool = True
    """separable (diagonal) CMA-ES: fast ask/tell for C's 867 parameters"""
    init: Literal["zero", "bc", "dagger", "checkpoint"] = "zero"
    """CMA's initial mean: zeros, C fitted to the recorded actions (bc), DAgger with the autopilot as expert,
    or an existing controller checkpoint (--cmaes.init-from); bc and dagger use expert labels: not dream-only"""
    init_from: str = ""
    """--cmaes.init checkpoint: the controller checkpoint to start from (empty = CHECKPOINT_DIR's)"""
    init_memory: str = ""
    """--cmaes.init checkpoint: the M that C was evolved on (empty = the one its checkpoint names)"""
    carry: bool = True
    """a C started on another M than its own is first carried onto this M's h (least squares on its own
    outputs over the recording: retraining M moves h)"""
    real_trials: int = 2
    """--cmaes.mode real: real episodes per candidate per generation"""
    real_steps: int = 1000
    """--cmaes.mode real: step limit of a training episode"""
    stall_steps: int = 0
    """--cmaes.mode real: a training episode ends after this many steps without a new tile (0 = never)"""
    smoothing: float = 0.0
    """action smoothing of C in this stage's dreams and real episodes (a_t = (1-s)·C + s·a_{t-1}; 0 = off)"""
    dagger_rounds: int = 12
    """--cmaes.init dagger: rounds in which C drives and the autopilot labels its states"""
    dagger_episodes: int = 8
    """--cmaes.init dagger: real episodes per round"""
    dagger_noise: float = 1.0
    """--cmaes.init dagger: the autopilot's noise level in round 0"""
    bc_ridge: float = 10.0
    """--cmaes.init bc / dagger: ridge λ on standardised inputs"""
    bc_eps: float = 0.02
    """--cmaes.init bc / dagger: actions are clipped ε inside their range before atanh / logit"""

    USER: ClassVar[tuple[str, ...]] = ("mode", "population", "sigma0", "generations", "init", "init_from")


@dataclass(frozen=True)
class Checks:
    """The real-env checks: fixed tracks C drives to choose which parameters are kept, never its fitness."""

    every: int = 5
    """CMA's mean drives the check tracks every this many generations (0 = never)"""
    best_candidate: bool = False
    """also check the generation's best candidate (the dream's favourite; in dream mode it was never the C a default
    run kept, and each of its checks costs as much as the mean's: docs/stages.md#checks-of-cmas-mean-only)"""
    episodes: int = 8
    """check tracks (8 tracks: a check's standard error is still ~±70)"""
    max_steps: int = 1000
    """step limit of a check episode (and of the episodes the loop records with C)"""
    seed_base: int = 1_000_000
    """check tracks are seeds BASE … BASE+episodes−1 (away from the recording's seeds)"""

    USER: ClassVar[tuple[str, ...]] = ("every", "episodes")


@dataclass(frozen=True)
class Loop:
    """Stage 4's repair loop: C evolves in M's dream, C's own episodes and the dream's replayed lies join the
    data, M continues on them, C evolves in the new dream; the best-checked iteration is kept."""

    iterations: int = 3
    """iterations (1 = one CMA-ES run in M's dream, the seed's stage 4)"""
    patience: int = 0
    """stop once the kept C's check has not improved for this many iterations (0 = run them all)"""
    patience_delta: float = 0.0
    """--loop.patience: a check counts as better only when it beats the best by more than this"""
    controller_start: Literal["warm", "zero", "both"] = "both"
    """each later iteration's CMA-ES starts from the last kept C, from zero, or both (the better check is kept)"""
    sigma0_warm: float = 0.05
    """CMA-ES's initial step size of a warm start"""
    warm_dreams: str = ""
    """a warm start's dreams, START:STEPS (agent:200 = 200-step dreams from C's own recorded episodes); empty =
    the same dreams as from zero"""
    warm_generations: int = 0
    """CMA-ES generations of a warm start (0 = --cmaes.generations)"""
    memory_epochs: int = 4
    """M's epochs per later iteration, continuing on all data"""
    memory_heads_only: bool = False
    """after iteration 0 train only M's heads (h stays: each kept C drives as before)"""
    agent_episodes: int = 16
    """episodes recorded per iteration with exploration noise, by the kept C and by the dream's choice"""
    agent_noise: float = 0.3
    """largest exploration noise of those episodes (drawn per episode)"""
    agent_rescue: int = 0
    """in those episodes, steps on the grass before the autopilot drives C back to the road (0 = never): M then
    sees the way back from the grass, which C's own episodes rarely show (record.rescue)"""
    record_dream_choice: float = 0.5
    """share of those episodes driven by CMA's final mean (the dream's choice) instead of the kept C"""
    repair_episodes: int = 8
    """dreams of the dream's choice replayed in the real env per iteration, as data for M (0 = no repair)"""
    check_episodes: int = 0
    """the worst check tracks of the iteration's checked Cs replayed as data for M, this many (0 = off; measured
    inside the spread of runs without, run r24)"""
    fidelity_panel: int = 0
    """controllers in each iteration's dream-real measurement (0 = off, else ≥ 3)"""
    fidelity_episodes: int = 2
    """--loop.fidelity-panel: real tracks per controller"""
    panel_as_data: bool = False
    """--loop.fidelity-panel: its real episodes also join the data (measured worse: runs r25 and r26,
    docs/dream-repair.md)"""
    select_top: int = 2
    """the final choice: the best-checked iterations, this many, drive --loop.select-episodes more tracks and the
    best mean is kept (0 = keep the best check, which is optimistic)"""
    select_episodes: int = 32
    """--loop.select-top: selection tracks per candidate (seeds 7,000,000 + j: never recorded, trained or checked)"""

    USER: ClassVar[tuple[str, ...]] = ("iterations", "patience", "controller_start", "repair_episodes", "select_top")


@dataclass(frozen=True)
class Config:
    """The whole recipe: recording, V, M, the dream, CMA-ES, the checks and the loop."""

    preset: str = "default"
    """the preset these values started from (informative: the values below are what runs)"""
    run: Run = field(default_factory=Run)
    record: Record = field(default_factory=Record)
    vision: Vision = field(default_factory=Vision)
    memory: Memory = field(default_factory=Memory)
    dream: Dream = field(default_factory=Dream)
    cmaes: Cmaes = field(default_factory=Cmaes)
    checks: Checks = field(default_factory=Checks)
    loop: Loop = field(default_factory=Loop)


SECTIONS: dict[str, type] = {f.name: f.type if isinstance(f.type, type) else typing.get_type_hints(Config)[f.name]
                             for f in dataclasses.fields(Config) if f.name != "preset"}

# --- the presets: values that differ from the defaults, by dotted key ----------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # The seed repository's settings, unchanged: 20 autopilot episodes of 500 steps, V 100 epochs with plain KL
    # annealed over all of them, M 20 epochs without dropout or value head, stage 4 one full-CMA-ES pass of 200
    # generations of 16 dreams of 50 steps from recorded states, checks on 4 tracks every 10 generations.
    "seed": {"record.episodes": 20, "record.steps": 500, "record.random_episodes": 0,
             "vision.epochs": 100, "vision.kl_anneal_epochs": 100.0, "vision.free_bits": 0.0,
             "memory.epochs": 20, "memory.dropout": 0.0, "memory.value_discount": 0.0,
             "loop.iterations": 1, "cmaes.population": 32, "cmaes.sigma0": 0.1, "cmaes.generations": 200,
             "cmaes.diagonal": False, "dream.steps": 50, "dream.trials": 16, "dream.dropout": 0.0,
             "dream.fitness": "mean", "dream.start": "recorded", "dream.value": False,
             "checks.every": 10, "checks.episodes": 4, "checks.best_candidate": True},
    # make demo: the whole pipeline in ~12 min on 2 cores (docs/stages.md#the-demo-make-demo has what was tried).
    # 24 noisy autopilot episodes × 500 steps + 6 random ones; V a few epochs at a higher learning rate (β reaches
    # 1); M small batches for a few hundred steps, with dropout and a value head; stage 4 the repair loop, iteration
    # 0 from zero, later ones from zero and warm from the last kept C, as the default recipe (3 iterations: the third
    # raised the mean over stage 4's seeds 0-2 from 367.8 to 534.0 on 10 selection tracks, both starts to 601.8,
    # 504.0 over seeds 0-4); population 16, 10 generations, checks on 3 tracks of the env's 1000 steps (500-step
    # runs mis-rank the Cs: a C that leaves the road late looks as good as a steady one), and a final choice of the
    # two best-checked iterations on 10 tracks (stage 4 seeds 0-4, scored on tracks 7,000,500-509: 487.1 -> 552.3).
    "demo": {"record.driver": "autopilot", "record.episodes": 24, "record.steps": 500, "record.random_episodes": 6,
             "vision.epochs": 4, "vision.kl_anneal_epochs": 2.0, "vision.lr": 1e-3,
             "memory.epochs": 30, "memory.batch_size": 8, "memory.lr": 1e-3,
             "loop.iterations": 3, "cmaes.population": 16, "cmaes.generations": 10, "checks.every": 5,
             "checks.episodes": 3, "dream.trials": 16, "loop.memory_epochs": 5, "loop.agent_episodes": 6,
             "loop.repair_episodes": 4, "loop.select_top": 2, "loop.select_episodes": 10},
    # The paper's CarRacing protocol for C: real-env CMA-ES, population 64, 16 episodes per candidate, 1800
    # generations, checks every 25 generations on 1024 tracks.
    "paper": {"cmaes.mode": "real", "loop.iterations": 1, "cmaes.population": 64, "cmaes.real_trials": 16,
              "cmaes.real_steps": 1000, "cmaes.generations": 1800, "cmaes.diagonal": False, "checks.every": 25,
              "checks.episodes": 1024, "checks.max_steps": 1000, "checks.best_candidate": True},
    # A person's own driving (docs/driving.md#a-recipe-for-your-own-driving-the-person-preset): 20 episodes of
    # yours (6.7 minutes at the wheel, plus the 16 random ones), then stage 4 runs 5 iterations from the last kept
    # C only. On small data C's own episodes are what make the dream work (the loop adds ~21,000 frames an
    # iteration: 10 episodes went from 273.5 to 408.5 over the held-out tracks), and the runs from zero never won
    # a later iteration on the keyboard stand-in's data (0 of 10), so they are dropped for two more iterations at
    # about a fifth more of stage 4's time.
    "person": {"record.episodes": 20, "loop.iterations": 5, "loop.controller_start": "warm"},
}

# --- ranges: (key, test, what was expected) ------------------------------------------------------------------------

_POSITIVE = ("record.episodes", "record.steps", "record.seq_len", "vision.epochs", "vision.batch_size",
             "vision.latent_size", "memory.epochs", "memory.batch_size", "memory.hidden_size", "memory.num_mixtures",
             "memory.encode_batch_size", "dream.steps", "dream.trials", "dream.start_states", "dream.batch_size",
             "cmaes.real_trials", "cmaes.real_steps", "cmaes.dagger_episodes", "checks.episodes", "checks.max_steps",
             "loop.iterations", "loop.fidelity_episodes", "loop.select_episodes")
_NON_NEGATIVE = ("run.seed", "run.threads", "run.workers", "record.random_episodes", "cmaes.generations",
                 "cmaes.stall_steps", "record.rescue", "loop.agent_rescue",
                 "cmaes.dagger_rounds", "checks.every", "checks.seed_base", "loop.patience", "loop.patience_delta",
                 "loop.warm_generations", "loop.memory_epochs", "loop.agent_episodes", "loop.repair_episodes",
                 "loop.check_episodes", "loop.fidelity_panel", "loop.select_top", "vision.free_bits",
                 "vision.kl_anneal_epochs", "memory.grad_clip", "memory.reward_weight", "memory.done_weight",
                 "memory.value_weight", "memory.reward_clip", "memory.done_pos_weight", "dream.temperature",
                 "dream.fitness_k", "cmaes.bc_ridge")
RANGES: list[tuple[str, Callable[[Any], bool], str]] = [
    *((key, lambda v: v >= 1, "a positive integer") for key in _POSITIVE),
    *((key, lambda v: v >= 0, "0 or more") for key in _NON_NEGATIVE),
    ("cmaes.population", lambda v: v >= 2, "at least 2 (CMA-ES needs 2 candidates)"),
    ("cmaes.sigma0", lambda v: v > 0, "a positive step size"),
    ("loop.sigma0_warm", lambda v: v > 0, "a positive step size"),
    ("vision.lr", lambda v: v > 0, "a positive learning rate"),
    ("memory.lr", lambda v: v > 0, "a positive learning rate"),
    ("record.noise", lambda v: 0 <= v <= 10, "a noise level in [0, 10]"),
    ("record.reaction_steps", lambda v: v >= 0, "0 or more"),
    ("record.mistakes", lambda v: 0 <= v <= 1, "a chance in [0, 1]"),
    ("cmaes.dagger_noise", lambda v: 0 <= v <= 10, "a noise level in [0, 10]"),
    ("loop.agent_noise", lambda v: 0 <= v <= 10, "a noise level in [0, 10]"),
    ("vision.val_fraction", lambda v: 0 < v < 1, "a fraction in (0, 1)"),
    ("memory.val_fraction", lambda v: 0 < v < 1, "a fraction in (0, 1)"),
    ("memory.dropout", lambda v: 0 <= v < 1, "0 <= p < 1"),
    ("dream.dropout", lambda v: 0 <= v < 1, "0 <= p < 1"),
    ("memory.value_discount", lambda v: 0 <= v < 1, "0 (no value head) or γ in (0, 1)"),
    ("dream.fitness_q", lambda v: 0 <= v <= 1, "a quantile in [0, 1]"),
    ("cmaes.smoothing", lambda v: 0 <= v < 1, "0 <= s < 1"),
    ("cmaes.bc_eps", lambda v: 0 < v < 0.5, "0 < ε < 0.5"),
    ("cmaes.dagger_episodes", lambda v: v <= 1000, "at most 1000 (seeds per round)"),
    ("checks.episodes", lambda v: v < 10_000, "fewer than 10000 (real-mode training seeds start 10000 above the base)"),
    ("loop.record_dream_choice", lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    ("loop.fidelity_panel", lambda v: v == 0 or v >= 3, "0 (off) or at least 3"),
    ("loop.warm_dreams", lambda v: v == "" or (v.count(":") == 1 and v.split(":")[0] in ("agent", "recorded")
                                               and v.split(":")[1].isdigit() and int(v.split(":")[1]) > 0),
     "empty or START:STEPS with START agent or recorded and STEPS a positive integer (e.g. agent:200)"),
]


# --- reading and writing values ----------------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def keys() -> list[str]:
    """Every settable key, dotted (``dream.trials``), in declaration order."""
    return [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def get(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def as_dict(config: Config) -> dict[str, Any]:
    """The config as nested plain data (``{"preset": ..., "run": {...}, ...}``; tuples as lists)."""
    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value
    return {"preset": config.preset,
            **{section: {k: plain(v) for k, v in dataclasses.asdict(getattr(config, section)).items()}
               for section in SECTIONS}}


def _coerce(key: str, value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against the field's type (ints are accepted as floats; strings from the command line are
    parsed first by argparse); a wrong type is a :class:`ConfigError` naming the key."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}{key} = {value!r}: expected {expected}")

    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise bad("one of " + ", ".join(map(str, choices)))
        return value
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise bad("a list of strings")
        if not all(isinstance(item, str) for item in value):
            raise bad("a list of strings")
        return tuple(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise TypeError(f"{key}: unsupported config type {annotation}")  # a programming error, not the user's


def with_values(config: Config, values: Mapping[str, Any], where: str = "") -> Config:
    """``config`` with ``values`` (dotted key → value) set, each checked for its key and type; ``where`` prefixes
    error messages (a file's name, ``--``)."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if key == "preset":
            continue
        section, _, name = key.partition(".")
        if section not in SECTIONS or name not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
            raise ConfigError(f"{where}{key}: unknown key (expected one of: {_near(key)})")
        changes.setdefault(section, {})[name] = _coerce(key, value, _hints(SECTIONS[section])[name], where)
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **fields)
                                          for section, fields in changes.items()})


def _near(key: str) -> str:
    """The keys of ``key``'s section (or the sections) for an unknown-key message."""
    section = key.partition(".")[0]
    if section in SECTIONS:
        return ", ".join(f"{section}.{f.name}" for f in dataclasses.fields(SECTIONS[section]))
    return ", ".join(f"{s}.*" for s in SECTIONS)


def preset_values(name: str) -> Config:
    """The defaults with preset ``name``'s values (not yet validated: later values may still change them)."""
    if name not in PRESETS:
        raise ConfigError(f"--preset {name}: no such preset (expected one of {', '.join(PRESETS)})")
    return with_values(Config(preset=name), PRESETS[name], f"preset {name}: ")


def preset(name: str, **overrides: Any) -> Config:
    """The config of preset ``name`` with ``overrides`` (dotted keys with ``.`` written ``__``:
    ``preset("demo", dream__trials=4)``), validated."""
    config = replace(preset_values(name), **overrides)
    validate(config)
    return config


def flatten(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A config file's nested tables as dotted keys (an unknown table or a non-table section is named)."""
    flat: dict[str, Any] = {}
    for section, fields in data.items():
        if section == "preset":
            if not isinstance(fields, str):
                raise ConfigError(f"{where}preset = {fields!r}: expected a preset name")
            flat["preset"] = fields
        elif not isinstance(fields, dict):
            raise ConfigError(f"{where}{section}: expected a table [{section}] (one of {', '.join(SECTIONS)})")
        else:
            flat.update({f"{section}.{name}": value for name, value in fields.items()})
    return flat


def read_file(path: str | Path) -> dict[str, Any]:
    """A TOML config file as dotted keys; an unreadable file or bad TOML is one line naming the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config {path}: unreadable ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--config {path}: not valid TOML ({err})") from None
    return flatten(data, f"{path}: ")


def validate(config: Config) -> None:
    """Every value in its range, else a :class:`ConfigError` naming the key. (Whether M has the value head that
    ``dream.value`` needs is checked by stage 4 on the M it loads, not here: stage 3 alone may train M without one.)"""
    for key, test, expected in RANGES:
        value = get(config, key)
        if not test(value):
            raise ConfigError(f"{key} = {value!r}: expected {expected}", key, expected)


def toml_text(config: Config) -> str:
    """The config as TOML (every key, one table per section): ``--config`` of it gives this config again."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return repr(v)  # shortest repr that reads back to the same float
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(item) for item in v) + "]"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
        return str(v)

    lines = [f"preset = {value(config.preset)}"]
    for section, fields in as_dict(config).items():
        if section == "preset":
            continue
        lines += ["", f"[{section}]", *(f"{name} = {value(v)}" for name, v in fields.items())]
    return "\n".join(lines) + "\n"


def write_resolved(config: Config, path: str | Path) -> Path:
    """Write the resolved config to ``path`` (atomically): the run's record of exactly what ran."""
    from car_racing.common.runtime import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(toml_text(config))
    return path


def resolved_path(directory: str | Path, stage: str) -> Path:
    """Where stage ``stage`` writes its resolved config: ``DIRECTORY/<stage>.config.toml``."""
    return Path(directory) / f"{stage}{CONFIG_SUFFIX}"


# --- the command line ------------------------------------------------------------------------------------------------


def flag_of(key: str) -> str:
    """``run.data_dir`` → ``--data-dir``; ``dream.fitness_q`` → ``--dream.fitness-q``."""
    section, name = key.split(".")
    return "--" + (name if section == "run" else f"{section}.{name}").replace("_", "-")


def _add_flag(group: Any, key: str, annotation: Any, default: Any, doc: str, shown: bool) -> None:
    many = get_origin(annotation) in (tuple, list)
    group.add_argument(flag_of(key), dest=key, default=argparse.SUPPRESS,
                       help=(f"{doc} (default: {default!r})" if doc else None) if shown else argparse.SUPPRESS,
                       **flag_kwargs(annotation, "NAME" if many else key.split(".")[1].upper(), nargs="*"))


def build_parser(sections: Sequence[str], description: str, show_all: bool) -> argparse.ArgumentParser:
    """A parser with ``--preset``, ``--config`` and one flag per field of ``sections``; ``--help`` lists each
    section's user-facing fields (``USER``), ``--help-all`` every one."""
    parser = OneLineErrorParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False,
                                epilog="every setting is also a key of the config file (--config FILE, TOML: "
                                       "[section] key = value); --help-all lists every flag")
    parser.add_argument("--preset", default=None, metavar="{" + ",".join(PRESETS) + "}",
                        help="start from these values instead of the defaults (car_racing/common/config.py PRESETS)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a TOML config file (e.g. a run's resolved CHECKPOINT_DIR/*.config.toml: reruns it "
                             "exactly)")
    parser.add_argument("--help-all", action="store_true", help="list every flag, not only the common ones")
    for section in sections:
        cls = SECTIONS[section]
        docs, hints = field_docstrings(cls), _hints(cls)
        group = parser.add_argument_group(f"{section}: {(cls.__doc__ or '').splitlines()[0].rstrip('.')}")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            _add_flag(group, f"{section}.{f.name}", hints[f.name], default, docs.get(f.name, ""),
                      show_all or f.name in cls.USER)  # type: ignore[attr-defined]
    return parser


NoEffect = Callable[[Config], Mapping[str, str]]  # config → {key: why it has no effect}


def parse(sections: Sequence[str], argv: Sequence[str] | None = None, description: str = "",
          no_effect: NoEffect | None = None) -> tuple[Config, set[str]]:
    """The config a stage's command line asks for, validated, and the keys given as flags.

    ``no_effect(config)`` names the keys that change nothing in the chosen mode: one given as a flag is an error
    naming the flag (a config file may hold every key: a resolved file does)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(sections, description, show_all="--help-all" in argv)
    if "--help-all" in argv:
        parser.print_help()
        parser.exit(0)
    namespace = vars(parser.parse_args(argv))
    name, file = namespace.pop("preset"), namespace.pop("config")
    namespace.pop("help_all")
    try:
        from_file = read_file(file) if file else {}
        config = with_values(preset_values(name or from_file.get("preset", "default")), from_file, f"{file}: ")
        config = with_values(config, namespace, "--")
        given = set(namespace)
        try:
            validate(config)
        except ConfigError as err:  # say where the value came from: a flag, the file, or the preset
            if err.key in given:
                raise ConfigError(f"{flag_of(err.key)} {get(config, err.key)}: expected {err.expected}") from None
            if err.key in from_file:
                raise ConfigError(f"{file}: {err}") from None
            raise
        if no_effect is not None:
            for key, why in no_effect(config).items():
                if key in given:
                    raise ConfigError(f"{flag_of(key)}: has no effect here ({why})")
    except ConfigError as err:
        parser.exit(USAGE_EXIT_CODE, f"{parser.prog}: error: {str(err).replace('--', '--', 1)}\n")
    return config, given


def run_stage(main: Callable[[Config], Any], sections: Sequence[str], description: str = "",
              no_effect: NoEffect | None = None, argv: Sequence[str] | None = None) -> None:
    """A stage script's ``__main__``: parse its config, run ``main(config)``; a :class:`UsageError` is one line,
    exit 2; Ctrl-C exits 130 after the stage has saved."""
    config, _ = parse(sections, argv, description, no_effect)
    report_errors(main, config)


def usable_cores() -> int:
    """The cores this process may run on (``taskset``, a container's CPU set), not the machine's."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def workers_of(run: Run) -> int:
    """``run.workers``, or (0) the cores this process may use."""
    return run.workers or usable_cores()


def rollout_steps(config: Config) -> int:
    """Steps of a training episode of C: a dream's length in dream mode, a real episode's limit in real mode."""
    return config.dream.steps if config.cmaes.mode == "dream" else config.cmaes.real_steps


def replace(config: Config, **values: Any) -> Config:
    """``config`` with dotted keys written ``section__field`` replaced (types checked; ranges are not re-checked:
    the library derives per-iteration configs with it)."""
    return with_values(config, {key.replace("__", "."): value for key, value in values.items()})


def user_keys(sections: Iterable[str]) -> list[str]:
    """The keys ``--help`` shows for these sections."""
    return [f"{section}.{name}" for section in sections
            for name in SECTIONS[section].USER]  # type: ignore[attr-defined]
