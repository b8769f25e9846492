"""The main job behind ``make demo``: the whole pipeline on quick settings, in a fresh run folder.

    python car_racing/demo.py            # → runs/demo-YYYYmmdd-HHMMSS/{data,checkpoints,...}

Stages, in order (each calls the stage script's ``main(Args(...))``; see :data:`STAGES`):

1. record autopilot driving with noise        → data/
2. train V (ConvVAE)                           → checkpoints/vision_model.pth (+ loss PNG)
3. train M (MDN-RNN)                           → checkpoints/memory_model.pth (+ loss PNG)
4. train C in M's dream (stage 4, ``train_controller_cmaes.py``): the repair loop from zero on this run's
   own V and M — C evolves in the dream only (real checks choose what to keep), C's episodes and the repair
   replays are recorded, M continues on them, C evolves in the new dream
                                               → checkpoints/{memory_model,control_model_cmaes}.pth,
                                                 checkpoints/dream_loop/ (iterations, dream_loop.png)
5. the simulator: the dream-trained agent drives real tracks → prints its score line, agent_driving.mp4
6. V's reconstructions of held-out frames      → vision_reconstructions.png
7. V's video of a held-out episode             → vision_episode.mp4
8. M dreaming beside a recorded episode        → memory_dream.mp4, memory_dream_reward.png

Every stage writes only inside the run folder and reads only what earlier stages wrote there: the score line
belongs to V, M and C trained in this run from its own recording (the repo's ``data/`` and ``checkpoints/`` are
never read or written). At this scale the driver is weak; the last lines say how it compares with the shipped
agents. The quick settings are
all in :data:`PRESET` (one section of ``Args`` keyword arguments per stage script). A failing stage
stops the demo with one line naming it (the traceback, if any, goes to ``error.log`` in the run folder).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib
import json
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from car_racing.common.cli import UsageError, run_main
from car_racing.episodes.rollout import default_workers

# Quick settings for every stage, in one place: each section holds keyword arguments of that stage
# script's Args (paths and the seed are filled in by the demo); the same commands as the full run, smaller.
# About 15 minutes on 2 CPU cores (docs/stages.md#the-demo-make-demo has the measured times and score).
PRESET: dict[str, Any] = {
    "seed": 0,
    # 24 noisy autopilot episodes × 500 steps + 6 random-driver ones (M sees the car off the road) = 15,000
    # frames; windows of 100 steps for M.
    "record": {"driver": "autopilot", "episodes": 24, "steps": 500, "random_episodes": 6, "noise": 1.0,
               "seq_len": 100, "workers": None},  # None = the cores this process may use
    # A few epochs at a higher learning rate than the full run; β reaches 1 within the run, so z is a
    # real posterior (with β ≈ 0 the latents would be useless to M and C). threads 0 = the script's auto.
    "vision": {"epochs": 4, "kl_anneal_epochs": 2, "free_bits": 0.5, "lr": 1e-3, "batch_size": 100, "threads": 0},
    # ~135 training windows: small batches so that M gets a few hundred gradient steps; dropout on h before the
    # heads and a value head (γ 0.98), as the full run: stage 4's short dreams end on M's value. One torch thread
    # for M and C: their small batches gain little from a second one, and lose many times over when another
    # process shares the 2 cores.
    "memory": {"epochs": 30, "batch_size": 8, "lr": 1e-3, "dropout": 0.05, "value_discount": 0.98, "threads": 1},
    # Stage 4 from zero on this run's V and M: the repair loop (2 iterations) with stage 4's own dream (200-step
    # dreams from recorded states, 16 per candidate with one dropout mask each, their mean, ended on M's value),
    # a smaller population and fewer generations; real checks on 3 tracks of 500 steps choose what is kept; C's
    # episodes and the repair replays join M's data. No expert label reaches C. (Sizes tried, with their scores:
    # docs/stages.md#the-demo-make-demo.)
    "controller": {"loop_iterations": 2, "population": 16, "generations": 10, "eval_every": 5, "eval_episodes": 3,
                   "dream_start": "recorded", "rollout_steps": 200, "dream_trials": 16, "dream_fitness": "mean",
                   "dream_value": True, "dream_dropout": 0.1,
                   "eval_max_steps": 500, "loop_controller_start": "zero", "loop_memory_epochs": 5,
                   "loop_agent_episodes": 6, "loop_repair_episodes": 4, "loop_select_top": 0,
                   "workers": None,  # None = the cores this process may use
                   "threads": 1, "progress": False},
    # Held-out tracks (seeds 10000..) with a video of every episode.
    "simulator": {"episodes": 5, "max_steps": 1000, "workers": None, "video_scale": 3},
    "vision_png": {"columns": 8},
    "vision_video": {"max_steps": 300},
    "memory_video": {"max_steps": 300, "dream_steps": 50, "temperature": 1.0},
}

# The demo with PRESET, timed from its first stage to its last line on a fresh clone, 2-core CPU, nothing else
# running (docs/stages.md#the-demo-make-demo); what it says it expects before it starts is scaled from this.
MEASURED: dict[str, float] = {"cores": 2, "minutes": 6.5}

# The shipped agents a user can compare with: (folder in checkpoints/pretrained/, what it is). Their scores are read
# from each one's evaluation record (checkpoints/pretrained/<folder>/evaluation.json), never typed here.
SHIPPED_AGENTS = (("dream", "trained only in M's dream, from scratch: the five stages' defaults, the loop to 6 iterations"),
                  ("reward-only", "a dream-trained C fine-tuned by real reward alone"),
                  ("default", "DAgger with the scripted expert, then real-env CMA-ES"))


@dataclass
class Args:
    """Run every stage of the pipeline on quick settings (PRESET in car_racing/demo.py) in a new run folder."""

    runs_dir: str = "runs"
    """folder in which the run folder demo-YYYYmmdd-HHMMSS is created"""


# What the run folder ends with, in the order a person would look at it (the last lines name them).
SHOWCASE = (("agent_driving.mp4", "its agent driving the held-out tracks"),
            ("memory_dream.mp4", "M dreaming beside the real frames of a recorded episode"),
            ("vision_reconstructions.png", "what V sees: held-out frames and V's reconstructions"),
            ("checkpoints/dream_loop/dream_loop.png", "the loop's curve: C's real checks and dream fitness per iteration"))


def usable_cores() -> int:
    """The cores this process may run on (``taskset``, a container's CPU set), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return default_workers()


def expectation(cores: int, load: float) -> str:
    """What the demo says before it starts: how long it expects to take here, from :data:`MEASURED` (minutes on
    2 free cores) scaled by the free cores (this process's cores less the load average, at least one; the work
    spreads over 2 at most)."""
    free = max(1.0, min(float(cores), 2.0) - max(0.0, load))
    minutes = MEASURED["minutes"] * MEASURED["cores"] / min(free, MEASURED["cores"])
    line = (f"expect about {minutes:.0f} min here ({cores} core{'s' if cores != 1 else ''}, load {load:.1f}: "
            f"~{free:.1f} free); measured {MEASURED['minutes']:.0f} min on {MEASURED['cores']} free cores")
    if free < 1.5:
        line += "; with one core free it runs, slower"
    return line


def _settings(preset: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The preset's section for one stage, with ``workers: None`` replaced by the cores this process may use."""
    settings = dict(preset[key])
    if "workers" in settings and settings["workers"] is None:
        settings["workers"] = usable_cores()
    return settings


class _Tee:
    """A stdout that also remembers the last line starting with a given prefix (the simulator's score)."""

    def __init__(self, stream: Any, prefix: str):
        self.stream, self.prefix, self.found, self._line = stream, prefix, None, ""

    def write(self, text: str) -> int:
        self._line += text
        *done, self._line = self._line.split("\n")
        self.found = next((line for line in reversed(done) if line.startswith(self.prefix)), self.found)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


# --- the stages: ``run(run_dir, preset) -> summary line`` ---------------------------------------------


def record(run_dir: Path, preset: Mapping[str, Any]) -> str:
    """Stage 1: autopilot episodes with noise → run_dir/data."""
    from car_racing import recorded_frames
    from car_racing.recording.recorded_data import load_recorded

    recorded_frames.main(recorded_frames.Args(data_dir=str(run_dir / "data"), seed=preset["seed"],
                                              **_settings(preset, "record")))
    episodes = load_recorded(run_dir / "data", mmap=True).episodes
    rewards: dict[str, list[float]] = {}
    for episode in episodes:
        rewards.setdefault(str(episode["driver"]), []).append(float(episode["total_reward"]))
    by_driver = ", ".join(f"{driver} {len(r)} (reward mean {sum(r) / len(r):.1f})" for driver, r in rewards.items())
    return f"{len(episodes)} episodes, {sum(e['length'] for e in episodes)} steps: {by_driver}"


def vision(run_dir: Path, preset: Mapping[str, Any]) -> str:
    """Stage 2: V on run_dir/data → run_dir/checkpoints/vision_model.pth."""
    from car_racing import train_vision

    latest = train_vision.main(train_vision.Args(data_dir=str(run_dir / "data"),
                                                 checkpoint_dir=str(run_dir / "checkpoints"), seed=preset["seed"],
                                                 **_settings(preset, "vision")))
    best = int(latest["best_epoch"]) - 1
    history = latest["history"]
    return (f"best epoch {best + 1}: val recon {history['val_recon'][best]:.1f} + KL {history['val_kl'][best]:.1f}"
            f" = {latest['best_val_loss']:.1f} per image (β at the end {history['beta'][-1]:.2f})")


def memory(run_dir: Path, preset: Mapping[str, Any]) -> str:
    """Stage 3: M on V's latents → run_dir/checkpoints/memory_model.pth."""
    from car_racing import train_memory

    best = train_memory.main(train_memory.Args(data_dir=str(run_dir / "data"),
                                               checkpoint_dir=str(run_dir / "checkpoints"), seed=preset["seed"],
                                               **_settings(preset, "memory")))
    epoch, history = int(best["epoch"]), best["history"]
    return (f"best epoch {epoch}: val MDN NLL {history['val_mdn'][epoch - 1]:.3f} per latent dim, reward MSE "
            f"{history['val_reward'][epoch - 1]:.3f}, done BCE {history['val_done'][epoch - 1]:.4f}")




def controller(run_dir: Path, preset: Mapping[str, Any]) -> str:
    """Stage 4: C in M's dream from zero (the repair loop) on this run's V and M → run_dir/checkpoints (M, C)."""
    from car_racing import train_controller_cmaes

    final = train_controller_cmaes.main(train_controller_cmaes.Args(
        data_dir=str(run_dir / "data"), checkpoint_dir=str(run_dir / "checkpoints"), seed=preset["seed"],
        **_settings(preset, "controller")))
    training = final["training"]
    return (f"C trained only in the dream ({training['fitness_source']}, from {training['warm_start']}); "
            f"kept: {final['model_source']}, real check {final['best_real_score']:.1f}")


def simulator(run_dir: Path, preset: Mapping[str, Any]) -> str:
    """Stage 5: the dream-trained agent drives held-out tracks; its score line, and a video → agent_driving.mp4."""
    from car_racing import car_racing_gameplay_simulator as sim

    tee = _Tee(sys.stdout, "score:")
    with contextlib.redirect_stdout(tee):
        mean = sim.main(sim.Args(checkpoint_dir=str(run_dir / "checkpoints"), video=str(run_dir / "agent_driving.mp4"),
                                 **_settings(preset, "simulator")))
    return tee.found or f"score: {mean:.1f}"


def vision_png(run_dir: Path, preset: Mapping[str, Any]) -> str:
    """Stage 6: held-out frames, V's reconstructions and samples → run_dir/vision_reconstructions.png."""
    from car_racing import visualize_vision_model

    out = visualize_vision_model.main(visualize_vision_model.Args(
        checkpoint_dir=str(run_dir / "checkpoints"), data_dir=str(run_dir / "data"),
        out=str(run_dir / "vision_reconstructions.png"), seed=preset["seed"], **_settings(preset, "vision_png")))
    return f"{Path(out).name}"


def vision_video(run_dir: Path, preset: Mapping[str, Any]) -> str:
    """Stage 7: a held-out episode and V's reconstruction side by side → run_dir/vision_episode.mp4."""
    from car_racing import visualize_vision_video

    out = visualize_vision_video.main(visualize_vision_video.Args(
        checkpoint_dir=str(run_dir / "checkpoints"), data_dir=str(run_dir / "data"),
        out=str(run_dir / "vision_episode.mp4"), **_settings(preset, "vision_video")))
    return f"{Path(out).name}"


def memory_video(run_dir: Path, preset: Mapping[str, Any]) -> str:
    """Stage 8: M dreams beside a recorded episode → run_dir/memory_dream.mp4 and memory_dream_reward.png."""
    from car_racing import visualize_memory_prediction

    summary = visualize_memory_prediction.main(visualize_memory_prediction.Args(
        checkpoint_dir=str(run_dir / "checkpoints"), data_dir=str(run_dir / "data"),
        out=str(run_dir / "memory_dream.mp4"), seed=preset["seed"], **_settings(preset, "memory_video")))
    return (f"reward MSE in the dream {summary['reward_mse_dream']:.3f} (with real z "
            f"{summary['reward_mse_real_z']:.3f})")


@dataclass
class Stage:
    """One step of the pipeline: ``run(run_dir, preset)`` reads and writes only under ``run_dir`` and
    returns a one-line summary; its settings are ``preset[key]``."""

    name: str
    key: str
    run: Callable[[Path, Mapping[str, Any]], str]


STAGES: list[Stage] = [
    Stage("record autopilot driving (stage 1)", "record", record),
    Stage("train the vision model V (stage 2)", "vision", vision),
    Stage("train the memory model M (stage 3)", "memory", memory),
    Stage("train the controller C in M's dream, from zero: the repair loop (stage 4)", "controller", controller),
    Stage("the agent drives: simulator (stage 5)", "simulator", simulator),
    Stage("V reconstructions PNG", "vision_png", vision_png),
    Stage("V video", "vision_video", vision_video),
    Stage("M dream video and reward plot", "memory_video", memory_video),
]


def new_run_dir(runs_dir: Path) -> Path:
    """A fresh ``runs_dir/demo-YYYYmmdd-HHMMSS`` (a suffix is added if that second is taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in [""] + [f"-{i}" for i in range(1, 100)]:
        run_dir = runs_dir / f"demo-{stamp}{suffix}"
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
        except OSError as err:
            raise UsageError(f"--runs-dir {runs_dir}: cannot create a run folder ({err.strerror})") from None
    raise UsageError(f"--runs-dir {runs_dir}: too many run folders for {stamp}")


def written_files(run_dir: Path) -> list[Path]:
    """Every file under ``run_dir`` (relative, sorted), hidden ones and folders left out."""
    return sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run_dir).parts))


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.0f} kB"


def run_stages(run_dir: Path, preset: Mapping[str, Any], stages: list[Stage] | None = None
               ) -> list[tuple[Stage, float, str]]:
    """Run the stages in order in ``run_dir``; returns (stage, seconds, summary) for each. A failure
    raises one :class:`UsageError` naming the stage (traceback of unexpected errors → run_dir/error.log)."""
    import torch

    stages = STAGES if stages is None else stages
    missing = [stage.key for stage in stages if stage.key not in preset]
    if missing:
        raise UsageError(f"the demo preset has no settings for {', '.join(missing)}")
    threads = torch.get_num_threads()
    done = []
    for number, stage in enumerate(stages, start=1):
        print(f"\n=== [{number}/{len(stages)}] {stage.name} ===", flush=True)
        torch.set_num_threads(threads)  # a stage's thread choice must not leak into the next one
        started = time.perf_counter()
        try:
            summary = stage.run(run_dir, preset)
        except UsageError as err:
            raise UsageError(f"stage {number} ({stage.name}) failed: {err}") from None
        except Exception as err:  # noqa: BLE001 - one line for the user, the traceback in a file
            log = run_dir / "error.log"
            log.write_text(traceback.format_exc())
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise UsageError(f"stage {number} ({stage.name}) failed: {type(err).__name__}"
                             f"{': ' + reason if reason else ''} (traceback in {log})") from None
        seconds = time.perf_counter() - started
        print(f"=== {stage.name}: done in {seconds:.0f} s: {summary} ===", flush=True)
        done.append((stage, seconds, summary))
    torch.set_num_threads(threads)
    return done


def shipped_score(name: str) -> str:
    """One shipped agent's measured score, from its evaluation record (the only file the demo reads outside its run
    folder): ``MEAN ± STD over N tracks (seeds A–B), L laps``, or why there is no number (a missing or bad record)."""
    from car_racing.common.runtime import SHIPPED_DIR
    from car_racing.episodes.evaluation import EVALUATION_FILE, read_evaluation

    path = SHIPPED_DIR / name / EVALUATION_FILE
    if not path.is_file():
        return f"no score: its evaluation record, checkpoints/pretrained/{name}/{EVALUATION_FILE}, is missing"
    try:
        record = read_evaluation(path)
    except UsageError as err:
        return f"no score: {err}"
    first, last = record["seeds"]
    return (f"{record['mean']:.1f} ± {record['std']:.1f} over {record['episodes']} tracks (seeds {first}–{last}), "
            f"{record['laps_finished']} laps")


def verdict(score_line: str, episodes: Any, kept: str = "") -> str:
    """The demo's last word on its agent: the score, said plainly, beside the shipped agents' scores as their
    evaluation records give them (``kept``: the controller stage's summary, to say so when no checked candidate beat
    the all-zero C)."""
    import re

    found = re.search(r"score: (-?[0-9.]+)", score_line)
    mean = float(found.group(1)) if found else float("nan")
    if mean >= 600:
        judged = "it drives"
    elif mean >= 300:
        judged = "it drives, badly: it leaves the road or misses tiles on most tracks"
    else:
        judged = "it barely drives: at the demo's scale the dream is still exploited (C finds drivers M overpays)"
    lines = [(f"\nthe agent this run trained (V, M and C from its own recording) on {episodes} held-out tracks: "
              f"{score_line}: {judged}.")]
    if "initial mean (zero)" in kept:
        lines.append("No candidate evolved in the dream beat the all-zero controller on the real checks, so the kept C "
                     "is all zeros (straight ahead, half gas, half brake).")
    lines.append("The five stages with their full defaults (run r23 in docs/dream-repair.md, 55 min on 2 cores) scored "
                 "733.1 ± 194.5 on the simulator's 10 tracks; the shipped agents, for comparison (their evaluation "
                 "records, checkpoints/pretrained/*/evaluation.json):")
    lines += [f"  checkpoints/pretrained/{name}: {shipped_score(name)}; {what}" for name, what in SHIPPED_AGENTS]
    lines.append("  drive one: python car_racing/car_racing_gameplay_simulator.py --checkpoint-dir "
                 "checkpoints/pretrained/dream --render")
    return "\n".join(lines)


def main(args: Args, preset: Mapping[str, Any] | None = None) -> Path:
    """Run the demo (``preset`` defaults to :data:`PRESET`; tests pass a tiny one); returns the run folder."""
    preset = PRESET if preset is None else preset
    started = time.perf_counter()
    run_dir = new_run_dir(Path(args.runs_dir))
    (run_dir / "preset.json").write_text(json.dumps(preset, indent=1))
    print(f"demo run folder: {run_dir}  (settings: PRESET in car_racing/demo.py, copied to preset.json)")
    if preset is PRESET:
        print(expectation(usable_cores(), os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0), flush=True)
    done = run_stages(run_dir, preset)
    total = time.perf_counter() - started

    print(f"\n=== demo finished in {total / 60:.1f} min ===")
    for stage, seconds, summary in done:
        print(f"{seconds:6.0f} s  {stage.name}: {summary}")
    print("\nfiles written:")
    for path in written_files(run_dir):
        print(f"  {path}  ({_size((run_dir / path).stat().st_size)})")
    kept = next((summary for stage, _, summary in done if stage.key == "controller"), "")
    for stage, _, summary in done:
        if stage.key == "simulator":
            print(verdict(summary, preset["simulator"].get("episodes"), kept))
    print("\nwatch it:")
    for path, what in SHOWCASE:
        if (run_dir / path).is_file():
            print(f"  {run_dir / path}  {what}")
    print(f"everything is in {run_dir}")
    return run_dir


if __name__ == "__main__":
    run_main(main, Args)
