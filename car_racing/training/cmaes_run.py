"""One CMA-ES run of the controller C: its state saved every generation (:class:`Run`: ask, score, tell,
real-check, save), the record of how C was made (:func:`training_record`), and :func:`one_pass`, which composes
the models it trains against (:mod:`car_racing.training.setup`), a warm start
(:mod:`car_racing.training.warm_starts`) and a fitness source (:mod:`car_racing.training.fitness`) into one run.

**Real-env checks.** Every ``--checks.every`` generations the generation's best candidate and CMA's mean
each drive ``--checks.episodes`` real episodes on the fixed seeds ``eval-seed-base, eval-seed-base + 1, …``
(the same tracks every time, so scores compare across generations). A new run first checks CMA's
initial mean (generation 0), so the warm start competes too. The checkpoint's ``model_state`` holds the
parameters with the best mean real score so far (a tie goes to the later check); with no check, CMA's
current mean (``model_source`` says which). The checks only choose what to keep: they are never fitness.

**Resume.** After every generation the run writes, atomically, its resume file
(``control_model_cmaes.resume.pkl``: the CMA-ES state, the RNG states and everything else of the run) and then the
checkpoint (plain data: the kept C, the history, the checks, CMA's mean, the training record), so ``--resume``
continues the same run from the resume file. Only ``--resume`` reads that file, a pickle of the run's own, so
``--resume`` trusts its folder; the checkpoint is what anyone may load (``weights_only=True``) and hand on.
"""

from __future__ import annotations

import pickle
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from car_racing.common.cli import UsageError
from car_racing.common.config import Config, as_dict, get, rollout_steps
from car_racing.common.metrics import MetricsLog
from car_racing.common.runtime import (
    load_checkpoint,
    load_resume_state,
    plot_curves,
    save_checkpoint,
    save_resume_state,
)
from car_racing.common.plain_data import resume_path
from car_racing.episodes.agent import RealFitness
from car_racing.episodes.rollout import EpisodeResult
from car_racing.models.ffn import Controller
from car_racing.recording.recorded_data import has_recorded_data, load_recorded
from car_racing.training.check_replays import CHECK_DRIVER
from car_racing.training.fitness import REAL_TRAIN_SEED_OFFSET, REAL_TRAIN_SEED_RANGE, trial_mean
from car_racing.training.setup import Setup, load_setup
from car_racing.training.repair import REPAIR_DRIVER

PLOT_FILE = "control_model_cmaes.png"
PLOT_EVERY = 10  # the PNG is also rewritten at every real-env check and at the end


def rng_states() -> dict[str, Any]:
    """Python, numpy (global: pycma uses it besides its own ``randn``) and torch RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def make_es(x0: np.ndarray, config: Config, sigma0: float | None = None):
    import cma

    options = {"popsize": config.cmaes.population, "seed": config.run.seed + 1,  # pycma: seed 0 would mean "time"
               "verbose": -9, "randn": np.random.RandomState(config.run.seed % 2**32).randn}
    if config.cmaes.diagonal:
        options["CMA_diagonal"] = True
    return cma.CMAEvolutionStrategy(np.asarray(x0, dtype=np.float64), config.cmaes.sigma0 if sigma0 is None else sigma0, options)


def real_check(params: np.ndarray, config: Config, episodes: RealFitness) -> list[EpisodeResult]:
    """C(params)'s real-env episodes on the fixed check seeds (seed order), in the run's workers."""
    seeds = [config.checks.seed_base + i for i in range(config.checks.episodes)]
    return episodes.episodes(params, seeds, config.checks.max_steps, config.cmaes.smoothing)


def plot_history(history: dict[str, list], path: Path, mode: str) -> None:
    label = "dream" if mode == "dream" else "real-env training"
    curves = {f"{label} fitness, best candidate": history["fitness_best"],
              f"{label} fitness, population mean": history["fitness_mean"]}
    x = {name: history["generation"] for name in curves}
    if mode == "dream":
        curves[f"{label} fitness, CMA mean"] = history["fitness_cma_mean"]
        x[f"{label} fitness, CMA mean"] = history["generation"]
    for key, name in (("real_best_candidate", "real score, best candidate"), ("real_cma_mean", "real score, CMA mean")):
        checked = [(g, score) for g, score in zip(history["eval_generation"], history[key]) if score is not None]
        curves[name] = [score for _, score in checked]  # (the best candidate is checked only with
        x[name] = [g for g, _ in checked]               # --checks.best-candidate)
    plot_curves(curves, path, title=f"controller CMA-ES ({mode} mode)", xlabel="generation", ylabel="return", x=x)


def last_check_score(history: dict[str, list]) -> float | None:
    """The last real check's score as the progress bar shows it: the best candidate's where it was checked
    (--checks.best-candidate), else CMA's mean's; None before the first check."""
    if not history["eval_generation"]:
        return None
    best = history["real_best_candidate"][-1]
    return history["real_cma_mean"][-1] if best is None else best


# real episodes and steps a run drove, by use (Run.real_use): none yet
NO_REAL_USE = {"fitness_episodes": 0, "check_episodes": 0, "fitness_steps": 0, "check_steps": 0}


def training_record(config: Config, warm_start: dict | None, generation: int, kept_generation: int | None = None,
                    real_use: dict | None = None, checked_vectors: int = 0) -> dict:
    """How this C was made, for a reader to check from the file: fitness source, warm start (and its own
    record, recursively), generations, whether any expert label or real-env return shaped it, what real
    episodes chose it, and the dream's settings.

    What was used is counted as it happened, not read from the settings: ``real_use`` holds the real episodes
    this run drove for fitness (``fitness_episodes``: counted by the run's real-env workers) and for its checks
    (``check_episodes``); the warm start says itself whether it used expert labels. ``dream_trained``: no expert
    labels anywhere in the lineage and no real-env return ever used as fitness (real-env checks only choose what
    to keep). ``reward_only``: no expert labels anywhere — C learnt from rewards alone, dreamt or real (the
    paper's setting). ``kept_generation``: the generation whose check kept the parameters (the run's last
    generation when none was checked); ``total_generations`` counts the generations behind the kept parameters
    over the lineage (the kept generation of each run, not its last). ``choice`` counts the real episodes and
    parameter vectors that chose what to keep, in this run and over the lineage."""
    warm_start = warm_start or {"method": config.cmaes.init}
    source = warm_start.get("source_training") or {}
    real_use = {**NO_REAL_USE, **(real_use or {})}
    expert = bool(warm_start.get("expert_labels", config.cmaes.init != "zero"))
    real_fitness = real_use["fitness_episodes"] > 0 or bool(source.get("real_returns_as_fitness", False))
    kept = generation if kept_generation is None else kept_generation
    source_choice = source.get("choice") or {}
    record = {"fitness_source": config.cmaes.mode, "warm_start": config.cmaes.init, "generations": generation,
              "kept_generation": kept,
              "expert_labels": expert, "real_returns_as_fitness": real_fitness,
              "dream_trained": not expert and not real_fitness,
              # the paper's rule: C learnt from rewards alone (real or dreamt), no expert label anywhere in the lineage
              "reward_only": not expert,
              "real_fitness_episodes": int(real_use["fitness_episodes"]) + int(source.get("real_fitness_episodes", 0)),
              "real_fitness_steps": int(real_use["fitness_steps"]) + int(source.get("real_fitness_steps", 0)),
              "real_checks": {"every": config.checks.every, "episodes": config.checks.episodes, "seed_base": config.checks.seed_base,
                              "role": "choose which parameters to keep, never fitness"},
              "choice": {"check_episodes": int(real_use["check_episodes"]), "checked_vectors": int(checked_vectors),
                         "check_steps": int(real_use["check_steps"]),
                         "lineage_check_steps": int(real_use["check_steps"])
                         + int(source_choice.get("lineage_check_steps", 0)),
                         "lineage_check_episodes": int(real_use["check_episodes"])
                         + int(source_choice.get("lineage_check_episodes", 0)),
                         "lineage_checked_vectors": int(checked_vectors)
                         + int(source_choice.get("lineage_checked_vectors", 0))},
              "total_generations": kept + int(source.get("total_generations", 0))}
    if config.cmaes.mode == "real":
        record["real"] = {"trials": config.cmaes.real_trials, "rollout_steps": rollout_steps(config), "population": config.cmaes.population,
                          "sigma0": config.cmaes.sigma0, "diagonal": config.cmaes.diagonal, "smoothing": config.cmaes.smoothing,
                          "stall_steps": config.cmaes.stall_steps,
                          "seed_range": [config.checks.seed_base + REAL_TRAIN_SEED_OFFSET,
                                         config.checks.seed_base + REAL_TRAIN_SEED_OFFSET + REAL_TRAIN_SEED_RANGE]}
    if config.cmaes.mode == "dream":
        record["dream"] = {"rollout_steps": rollout_steps(config), "trials": config.dream.trials,
                           "temperature": config.dream.temperature, "dropout": config.dream.dropout,
                           "start_states": config.dream.start_states, "start": config.dream.start,
                           "start_drivers": list(config.dream.start_drivers), "data_dir": config.run.data_dir,
                           "fitness": {"aggregate": config.dream.fitness, "q": config.dream.fitness_q,
                                       "k": config.dream.fitness_k},
                           "value_bootstrap": config.dream.value}
    if source:
        record["warm_start_training"] = source
    return record


def legacy_real_use(state: dict, config: Config) -> dict:
    """The real episodes a run saved before they were counted had driven: real-mode fitness from its settings, its
    checks from its list of checks."""
    fitness = int(state["generation"]) * config.cmaes.population * config.cmaes.real_trials \
        if config.cmaes.mode == "real" else 0
    return {"fitness_episodes": fitness, "check_episodes": sum(len(c.get("seeds", ())) for c in state.get("checked") or [])}


def validate_resume(state: dict, setup: Setup) -> None:
    """One-line errors when a saved run cannot continue with these flags and models."""
    config, out_path = setup.config, setup.out_path
    if "es_state" not in state:
        raise UsageError(f"{resume_path(out_path)}: holds no CMA-ES state to resume; drop --resume to start a new run")
    for kind in ("vision", "memory"):
        if state.get("models", {}).get(kind, {}).get("sha256") != setup.models_used[kind]["sha256"]:
            raise UsageError(f"{out_path}: the run used a different {kind} checkpoint than {setup.paths[kind]}; "
                             f"drop --resume to start over")
    saved = state["config"]
    for key in ("cmaes.population", "cmaes.mode"):
        section, name = key.split(".")
        if saved.get(section, {}).get(name) != get(config, key):
            raise UsageError(f"--{key} {get(config, key)}: the resumed run used {saved.get(section, {}).get(name)}; "
                             f"pass the same value or drop --resume")
    if state["model_args"] != setup.model_args:
        raise UsageError(f"{out_path}: controller sizes {state['model_args']} do not fit M {setup.model_args}")


def warn_check_seed_overlap(config: Config) -> None:
    """Warn when a check track was recorded by a driver. The dream loop's check replays (driver ``check``) are the
    checks themselves, and its repair replays (``repair``) reuse the seed of the episode they start from: both
    expected."""
    if has_recorded_data(config.run.data_dir):
        recorded_seeds = {int(e["seed"]) for e in load_recorded(config.run.data_dir, mmap=True).episodes
                          if e["driver"] not in (CHECK_DRIVER, REPAIR_DRIVER)}
        overlap = recorded_seeds & set(range(config.checks.seed_base, config.checks.seed_base + config.checks.episodes))
        if overlap:
            print(f"warning: --checks.seed-base {config.checks.seed_base}: check seeds {sorted(overlap)[:5]} are also "
                  f"recording seeds", file=sys.stderr)


def fill_cma_mean(path: Path, mean: np.ndarray) -> None:
    """A checkpoint converted from the older format (car_racing/convert_checkpoints.py) has no CMA mean yet (it
    was inside the pickled CMA-ES state, which the converter does not unpickle): the resumed run fills it in,
    leaving the rest of the checkpoint (a selection written into it, say) as it is."""
    if path.is_file():
        checkpoint = load_checkpoint(path, "controller")
        if checkpoint.get("cma_mean", ()) is None:
            save_checkpoint({**checkpoint, "cma_mean": np.asarray(mean, dtype=np.float64)}, path)


HISTORY_KEYS = ("generation", "fitness_best", "fitness_mean", "fitness_cma_mean", "sigma", "seconds", "eval_generation",
                "real_best_candidate", "real_cma_mean", "real_best_candidate_std", "real_cma_mean_std",
                "fitness_best_trial_mean")  # the plain mean of the best candidate's dreams (= fitness_best with "mean")

# what controller_metrics.jsonl gets every generation (the CHECK_KEYS in generations with a real-env check)
METRIC_KEYS = ("fitness_best", "fitness_mean", "fitness_cma_mean", "sigma", "seconds")
CHECK_KEYS = ("real_best_candidate", "real_cma_mean", "real_best_candidate_std", "real_cma_mean_std")


class Run:
    """One CMA-ES run's state: the ES, the history, the best real-checked parameters; saved every generation."""

    def __init__(self, setup: Setup, es: Any, warm_start: dict | None, generation: int = 0,
                 history: dict | None = None, best_real_score: float | None = None,
                 best_params: np.ndarray | None = None, model_source: str = "cma_mean (no real-env check yet)",
                 checked: list[dict] | None = None, kept_generation: int | None = None,
                 real_use: dict | None = None):
        self.setup, self.es, self.warm_start, self.generation = setup, es, warm_start, generation
        self.kept_generation = kept_generation  # the generation whose check kept best_params (None: none yet)
        # real episodes this run drove, by use, counted as they were driven (the training record's honesty)
        self.real_use = {**NO_REAL_USE, **(real_use or {})}
        self.history = {key: list((history or {}).get(key, [])) for key in HISTORY_KEYS}
        self.best_real_score, self.best_params, self.model_source = best_real_score, best_params, model_source
        # every real-checked parameter set with its check score: select_controller.py re-ranks them on more tracks
        self.checked = list(checked or [])
        # wall clock of the run so far (history["seconds"], per generation, across resumes): the compute it took
        self._clock_base, self._clock_start = (self.history["seconds"] or [0.0])[-1], time.time()

    @classmethod
    def resume(cls, setup: Setup) -> "Run":
        """The run saved in ``setup.out_path``'s resume file (the run's own pickle: ``--resume`` trusts its folder)."""
        path = resume_path(setup.out_path)
        if not path.is_file():
            found = "only a checkpoint (" + str(setup.out_path) + ")" if setup.out_path.is_file() else "nothing"
            raise UsageError(f"{path}: no CMA-ES run to resume here ({found}); drop --resume to start a new run")
        state = load_resume_state(path)
        validate_resume(state, setup)
        restore_rng_states(state["rng_state"])
        print(f"resuming {setup.out_path} after generation {int(state['generation'])}")
        es = pickle.loads(state["es_state"])
        fill_cma_mean(setup.out_path, es.mean)
        return cls(setup, es, state.get("bc"), int(state["generation"]),
                   state["history"], state.get("best_real_score"), state.get("best_params"),
                   state.get("model_source", "cma_mean (no real-env check yet)"), state.get("checked"),
                   state.get("kept_generation"), state.get("real_use") or legacy_real_use(state, setup.config))

    @classmethod
    def start(cls, setup: Setup, x0: np.ndarray, warm_start: dict | None) -> "Run":
        """A new run from ``x0``; with checks on, the warm start is real-checked first (generation 0)."""
        config = setup.config
        run = cls(setup, make_es(x0, config), warm_start)
        metrics = MetricsLog(setup.checkpoint_dir, "controller", tensorboard=config.run.tensorboard)
        if config.checks.every:  # the warm start is a candidate for the best real score too
            episodes = real_check(x0, config, setup.real_episodes())
            score, spread = run.keep_if_best(x0, f"initial mean ({config.cmaes.init}) of generation 0", episodes)
            print(f"generation 0: real score of CMA's initial mean ({config.cmaes.init}) {score:.1f} ± {spread:.1f} "
                  f"over {config.checks.episodes} episodes")
            metrics.log(0, real_cma_mean=score, real_cma_mean_std=spread)  # a new run's file starts with this
        metrics.close()
        run.save()
        return run

    def driven(self, use: str) -> int:
        """Real episodes the run's workers have driven for ``use`` so far (0 before any worker started)."""
        return self.setup.real.driven[use] if self.setup.real is not None else 0

    def keep_if_best(self, params: np.ndarray, name: str, episodes: list[EpisodeResult]) -> tuple[float, float]:
        """Record the check of C(params) (``name``: which candidate of which generation) with each track's
        return and actions (the dream loop replays them as data for M: ``car_racing/training/check_replays.py``);
        keep the parameters when they score best so far. Returns the check's mean and std."""
        returns = np.array([episode.total_reward for episode in episodes])
        self.real_use["check_episodes"] += len(episodes)
        self.real_use["check_steps"] += sum(episode.steps for episode in episodes)
        score, spread = float(returns.mean()), float(returns.std())
        source = f"{name} (real score {score:.1f})"
        self.checked.append({"generation": self.generation, "source": source, "score": score, "std": spread,
                             "params": np.asarray(params, dtype=np.float32),
                             "seeds": [int(episode.seed) for episode in episodes], "returns": returns.tolist(),
                             "actions": [np.asarray(episode.actions, dtype=np.float32) for episode in episodes]})
        if self.best_real_score is None or score >= self.best_real_score:  # a tie goes to the later check
            self.best_real_score, self.best_params = score, np.array(params, dtype=np.float64)
            self.model_source, self.kept_generation = source, self.generation
        return score, spread

    def checkpoint(self) -> dict:
        """The controller checkpoint: plain data (loads with ``weights_only=True``), no CMA-ES or RNG state."""
        setup, config = self.setup, self.setup.config
        controller = Controller(*setup.sizes)
        controller.set_flat_params(self.best_params if self.best_params is not None else self.es.mean)
        return {"kind": "controller", "model_args": setup.model_args, "model_state": controller.state_dict(),
                "model_source": self.model_source, "best_params": self.best_params,
                "best_real_score": self.best_real_score, "checked": self.checked,
                "cma_mean": np.asarray(self.es.mean, dtype=np.float64),  # the dream's own choice (the loop saves it)
                "generation": self.generation, "history": self.history,
                "config": as_dict(config), "models": setup.models_used, "bc": self.warm_start,
                "kept_generation": self.kept_generation, "real_use": dict(self.real_use),
                "training": training_record(config, self.warm_start, self.generation, self.kept_generation,
                                            self.real_use, len(self.checked)),
                "reward_scale": setup.reward_scale}

    def save(self) -> None:
        """The resume file first (the whole run, with CMA-ES's and the RNGs' state), then the checkpoint: a crash
        between the two leaves a checkpoint one generation behind, which the resumed run rewrites."""
        checkpoint = self.checkpoint()
        save_resume_state({**checkpoint, "es_state": self.es.pickle_dumps(), "rng_state": rng_states()},
                          resume_path(self.setup.out_path))
        save_checkpoint(checkpoint, self.setup.out_path)

    def check(self, best_candidate: np.ndarray) -> float:
        """Real-env check of CMA's mean (first the generation's best candidate too, with --checks.best-candidate);
        keeps the best; returns the score the progress bar shows (:func:`last_check_score`). A score not checked is
        None in the history."""
        config, generation = self.setup.config, self.generation
        vectors = [("cma_mean", np.array(self.es.mean))]
        if config.checks.best_candidate:
            vectors.insert(0, ("best_candidate", best_candidate))
        scores = {"best_candidate": (None, None)}
        for name, params in vectors:
            scores[name] = self.keep_if_best(params, f"{name} of generation {generation}",
                                             real_check(params, config, self.setup.real_episodes()))
        self.history["eval_generation"].append(generation)
        for name, (mean, std) in scores.items():
            self.history[f"real_{name}"].append(mean)
            self.history[f"real_{name}_std"].append(std)
        best = (f"best candidate {scores['best_candidate'][0]:.1f} ± {scores['best_candidate'][1]:.1f}, "
                if config.checks.best_candidate else "")
        (tqdm.write if config.run.progress else print)(
            f"generation {generation}: real score {best}CMA mean {scores['cma_mean'][0]:.1f} "
            f"± {scores['cma_mean'][1]:.1f} over {config.checks.episodes} episodes; best so far {self.best_real_score:.1f}")
        return last_check_score(self.history)

    def evolve(self, fitness_source: Any) -> None:
        """Generations up to ``--cmaes.generations``: ask, score, tell, check every ``--checks.every``, save."""
        config, es, history = self.setup.config, self.es, self.history
        bar = tqdm(range(self.generation, config.cmaes.generations), desc=f"CMA-ES ({config.cmaes.mode})", unit="gen",
                   initial=self.generation, total=config.cmaes.generations, disable=not config.run.progress)
        last_real = last_check_score(history)
        metrics = MetricsLog(self.setup.checkpoint_dir, "controller", resume_after=self.generation,
                             tensorboard=config.run.tensorboard)
        try:
            for generation in bar:
                candidates = [np.asarray(x) for x in es.ask()]
                before = self.driven("returns"), self.driven("returns_steps")
                fitness, mean_fitness = fitness_source(candidates, np.asarray(es.mean), generation)
                self.real_use["fitness_episodes"] += self.driven("returns") - before[0]  # whatever the source drove
                self.real_use["fitness_steps"] += self.driven("returns_steps") - before[1]
                es.tell(candidates, (-fitness).tolist())  # pycma minimises
                best = int(np.argmax(fitness))
                self.generation = generation + 1
                for key, value in (("generation", generation + 1), ("fitness_best", float(fitness[best])),
                                   ("fitness_mean", float(fitness.mean())), ("fitness_cma_mean", mean_fitness),
                                   ("sigma", float(es.sigma)),
                                   ("fitness_best_trial_mean", trial_mean(fitness_source, best)),
                                   ("seconds", self._clock_base + time.time() - self._clock_start)):
                    history[key].append(value)
                checked = bool(config.checks.every) and self.generation % config.checks.every == 0
                if checked:
                    last_real = self.check(candidates[best])
                metrics.log(self.generation, {key: history[key][-1] for key in METRIC_KEYS + (CHECK_KEYS if checked else ())})
                self.save()
                if checked or self.generation % PLOT_EVERY == 0 or self.generation == config.cmaes.generations:
                    plot_history(history, self.setup.checkpoint_dir / PLOT_FILE, config.cmaes.mode)
                bar.set_postfix(best=f"{fitness[best]:.2f}", mean=f"{fitness.mean():.2f}",
                                real="-" if last_real is None else f"{last_real:.1f}")
        finally:
            bar.close()
            metrics.close()


# --- one run: the warm start (or the saved run), the generations, the final report ----------------------------------

def one_pass(config: Config) -> dict:
    """One CMA-ES run with the config's warm start and fitness source, in CHECKPOINT_DIR."""
    import torch

    from car_racing.common.config import resolved_path, write_resolved
    from car_racing.common.runtime import seed_everything

    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    seed_everything(config.run.seed)
    setup = load_setup(config)
    write_resolved(config, resolved_path(config.run.checkpoint_dir, "controller"))
    try:
        return evolve_controller(setup)
    finally:
        setup.close_real()


def evolve_controller(setup: Setup) -> dict:
    """The warm start (or the saved run), the generations, the final report; returns the final checkpoint."""
    from car_racing.training.fitness import FITNESS_SOURCES
    from car_racing.training.warm_starts import WARM_STARTS, load_dagger_state

    config = setup.config
    dagger_state = load_dagger_state(setup.checkpoint_dir, config, setup.models_used)
    continue_dagger = dagger_state is not None and (len(dagger_state["rounds"]) < config.cmaes.dagger_rounds + 1
                                                    or not setup.out_path.is_file())  # (stopped before generation 0)
    if config.run.resume and not continue_dagger:
        run = Run.resume(setup)
    else:
        x0, warm_start = WARM_STARTS[config.cmaes.init](setup, dagger_state if continue_dagger else None)
        warn_check_seed_overlap(config)
        run = Run.start(setup, x0, warm_start)
    if run.generation < config.cmaes.generations:
        fitness_source = FITNESS_SOURCES[config.cmaes.mode](setup)
        try:
            run.evolve(fitness_source)
        finally:
            fitness_source.close()
    else:
        if config.run.resume:
            print(f"{setup.out_path} is already at generation {run.generation} "
                  f"(--cmaes.generations {config.cmaes.generations})")
        plot_history(run.history, setup.checkpoint_dir / PLOT_FILE, config.cmaes.mode)
    final = load_checkpoint(setup.out_path, "controller")
    score = "none yet" if final["best_real_score"] is None else f"{final['best_real_score']:.1f}"
    print(f"generation {final['generation']}: checkpoint {setup.out_path} holds {final['model_source']}; "
          f"best real score {score}")
    return final
