"""Warm starts for C's CMA-ES run (``--cmaes.init``): CMA's initial mean and a record of how it was found.

``zero`` knows nothing (the paper's start). ``bc`` fits C to the recorded actions: least squares of the
linear layer's pre-squash outputs on ``[z_t, h_t]`` (z = V's μ, h from running M over the recorded windows
with the recorded actions), targets ``atanh(clip(steer, -1+ε, 1-ε))`` and ``logit(clip(a, ε, 1-ε))`` for gas
and brake, ridge λ on standardised inputs (bias not penalised). ``dagger`` runs DAgger with the autopilot as
the expert (:mod:`car_racing.training.imitation`). ``checkpoint`` takes the C of an existing controller
checkpoint with its own training record, carried onto this run's M when it was evolved on another
(:mod:`car_racing.training.carry`). ``bc`` and ``dagger`` use expert labels: a C started from them is
never called dream-trained.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
import numpy as np

from car_racing.common.cli import UsageError
from car_racing.common.config import Config, flag_of, get, workers_of
from car_racing.common.plain_data import Refused, load_plain
from car_racing.common.runtime import load_model, plot_curves, save_checkpoint
from car_racing.episodes.backends import backend_of
from car_racing.recording.latent_cache import file_sha256, load_or_build_latents
from car_racing.recording.recorded_data import load_recorded
from car_racing.training.carry import carry_controller
from car_racing.training.setup import Setup
from car_racing.training.imitation import LinearFit, linear_to_flat, run_dagger

DAGGER_PLOT_FILE = "control_model_dagger.png"
DAGGER_STATE_FILE = "control_model_dagger.pth"  # the DAgger aggregate, saved every round (--resume continues it)
DAGGER_SEED_OFFSET = 2_000_000  # DAgger round r uses seeds BASE + 2_000_000 + 1000·r + i


DAGGER_SETTINGS = ("cmaes.dagger_episodes", "cmaes.dagger_noise", "cmaes.bc_ridge", "cmaes.bc_eps", "checks.seed_base",
                   "checks.max_steps", "cmaes.smoothing")  # a continued DAgger run must keep these


def load_dagger_state(checkpoint_dir: Path, config: Config, models_used: dict) -> dict | None:
    """The saved DAgger run to continue (``--resume --cmaes.init dagger``), or None when there is none."""
    path = checkpoint_dir / DAGGER_STATE_FILE
    if not (config.run.resume and config.cmaes.init == "dagger" and path.is_file()):
        return None
    try:
        state = load_plain(path)  # plain data, like every model file: loading it runs nothing
    except Refused as refused:
        raise UsageError(str(refused)) from None
    except Exception as err:
        raise UsageError(f"{path}: not a readable DAgger state ({type(err).__name__}); delete it to start over") from None
    if state.get("models") != models_used:
        raise UsageError(f"{path}: the DAgger run used other V/M checkpoints; delete it or drop --resume")
    for key in DAGGER_SETTINGS:
        if state["config"].get(key) != get(config, key):
            raise UsageError(f"{flag_of(key)} {get(config, key)}: the saved DAgger run used "
                             f"{state['config'].get(key)}; pass the same value or drop --resume")
    return state


def dagger_warm_start(checkpoint_dir: Path, num_params: int, config: Config, models_used: dict,
                      resume: dict | None = None) -> tuple[np.ndarray, dict]:
    """C fitted by DAgger (:func:`car_racing.training.imitation.run_dagger`); returns (flat params, summary).

    The aggregate and the rounds are saved atomically to CHECKPOINT_DIR/control_model_dagger.pth after
    every round (``resume`` continues from it), with a plot of each round's returns."""
    def seeds(round_index: int) -> list[int]:
        first = config.checks.seed_base + DAGGER_SEED_OFFSET + 1000 * round_index
        return list(range(first, first + config.cmaes.dagger_episodes))

    def report(record, state: dict) -> None:
        returns = np.asarray(record.returns)
        print(f"DAgger round {record.round} ({record.driver} drove): return {returns.mean():.1f} ± {returns.std():.1f} "
              f"(min {returns.min():.1f}) over {len(returns)} episodes; refit on {record.samples} pairs, "
              f"pre-squash R² steer/gas/brake {' / '.join(f'{r:.2f}' for r in record.target_r2)}", flush=True)
        save_checkpoint({**state, "config": {key: get(config, key) for key in DAGGER_SETTINGS},
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
    history = run_dagger(checkpoint_dir, num_params, config.cmaes.dagger_rounds, config.cmaes.dagger_episodes, seeds,
                         ridge=config.cmaes.bc_ridge, eps=config.cmaes.bc_eps, expert_noise=config.cmaes.dagger_noise,
                         max_steps=config.checks.max_steps, smoothing=config.cmaes.smoothing, workers=workers_of(config.run),
                         backend=backend_of(config.run), resume=resume, on_round=report)
    summary = {"method": "dagger", "ridge": config.cmaes.bc_ridge, "eps": config.cmaes.bc_eps, "noise": config.cmaes.dagger_noise,
               "samples": history[-1].samples, "target_r2": history[-1].target_r2,
               "seconds": seconds + time.time() - started,
               "rounds": [{k: v for k, v in dataclasses.asdict(r).items() if k != "params"} for r in history]}
    return history[-1].params, summary


# Each returns (flat parameters, a record of how they were found: method, source, whether expert labels
# were used); the record goes into the checkpoint's "bc" (historical name) and "training" entries.

def zero_start(setup: Setup, dagger_state: dict | None) -> tuple[np.ndarray, dict]:
    """All-zero parameters: steer 0, gas and brake 0.5 (the paper's start; no knowledge at all)."""
    return np.zeros(setup.num_params), {"method": "zero", "expert_labels": False}


def bc_start(setup: Setup, dagger_state: dict | None) -> tuple[np.ndarray, dict]:
    """C fitted by least squares to the recorded drivers' actions (module docstring)."""
    config = setup.config
    fit = LinearFit(setup.mdnrnn.latent_size + setup.mdnrnn.hidden_size, setup.mdnrnn.action_size)
    setup.load_start_pool(fit)
    weight, bias = fit.solve(config.cmaes.bc_ridge)
    info = {"method": "bc", "expert_labels": True, "samples": fit.count, "ridge": config.cmaes.bc_ridge, "eps": config.cmaes.bc_eps,
            "target_mse": fit.residual_mse(weight, bias).tolist(), "target_r2": fit.r2(weight, bias).tolist()}
    print(f"--cmaes.init bc: least-squares fit of C on {fit.count} recorded steps; pre-squash target R² "
          f"steer/gas/brake {' / '.join(f'{r:.2f}' for r in info['target_r2'])}")
    return linear_to_flat(weight, bias), info


def dagger_start(setup: Setup, dagger_state: dict | None) -> tuple[np.ndarray, dict]:
    """C fitted by DAgger with the autopilot as the expert (:func:`dagger_warm_start`)."""
    x0, info = dagger_warm_start(setup.checkpoint_dir, setup.num_params, setup.config, setup.models_used, dagger_state)
    return x0, {**info, "expert_labels": True}


def checkpoint_start(setup: Setup, dagger_state: dict | None) -> tuple[np.ndarray, dict]:
    """The C of an existing controller checkpoint (``--cmaes.init-from``); its training record is carried along."""
    source = Path(setup.config.cmaes.init_from) if setup.config.cmaes.init_from else setup.out_path
    start_controller, start = load_model(source, "controller")
    if start["model_args"] != setup.model_args:
        raise UsageError(f"--cmaes.init-from {source}: controller sizes {start['model_args']} do not fit M {setup.model_args}")
    print(f"--cmaes.init checkpoint: CMA starts from C in {source} ({start.get('model_source', 'no source recorded')})")
    source_training = start.get("training")
    params, carried = carried_params(setup, source, start, start_controller.get_flat_params())
    return params, {
        "method": "checkpoint", "from": str(source), "source_model": start.get("model_source"),
        "source_real_score": start.get("best_real_score"), "source_warm_start": start.get("bc"),
        "source_training": source_training, "carried": carried,
        # unknown history (an older checkpoint without a record) counts as possibly expert-labelled
        "expert_labels": True if source_training is None else bool(source_training.get("expert_labels", True))}


def carried_params(setup: Setup, source: Path, start: dict, params: np.ndarray) -> tuple[np.ndarray, dict | None]:
    """The --cmaes.init-from C carried onto this run's M (:mod:`car_racing.training.carry`) when it was evolved on
    another M (--cmaes.init-memory, else the M its checkpoint names, if that file is unchanged); else ``params`` as
    they are. Returns the parameters and the carry's record (None: not carried)."""
    config = setup.config
    recorded = start.get("models", {}).get("memory", {})
    old_path = Path(config.cmaes.init_memory) if config.cmaes.init_memory else Path(recorded["path"]) if recorded.get("path") else None
    current_sha = setup.models_used["memory"]["sha256"]
    if not config.cmaes.carry or old_path is None or (not config.cmaes.init_memory and recorded.get("sha256") == current_sha):
        return params, None
    if not old_path.is_file():
        print(f"--cmaes.init-from {source}: the M it was evolved on ({old_path}) is not there; C starts as it is, not carried "
              f"onto {setup.paths['memory']}")
        return params, None
    old_sha = file_sha256(old_path)
    if not config.cmaes.init_memory and old_sha != recorded.get("sha256"):
        print(f"--cmaes.init-from {source}: {old_path} changed since C was evolved on it; C starts as it is, not carried")
        return params, None
    if old_sha == current_sha:
        return params, None
    started = time.time()
    old_mdnrnn, _ = load_model(old_path, "memory", setup.device)
    mu, _ = load_or_build_latents(config.run.data_dir, setup.paths["vision"], setup.device, config.dream.batch_size,
                                  progress=config.run.progress)
    data = load_recorded(config.run.data_dir, mmap=True)
    carried, record = carry_controller(params, old_mdnrnn.float(), setup.mdnrnn, mu, data.actions,
                                       [(e["start"], e["length"]) for e in data.episodes])
    print(f"--cmaes.init checkpoint: C carried from {old_path} onto {setup.paths['memory']} by least squares on its own "
          f"outputs over {record['samples']} recorded steps of {config.run.data_dir} (R² steer/gas/brake "
          f"{' / '.join(f'{r:.3f}' for r in record['target_r2'])}; {time.time() - started:.0f}s)")
    return carried, {**record, "from_memory": {"path": str(old_path), "sha256": old_sha}, "data_dir": config.run.data_dir}


WARM_STARTS = {"zero": zero_start, "bc": bc_start, "dagger": dagger_start, "checkpoint": checkpoint_start}
