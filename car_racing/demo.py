"""The main job behind ``make demo``: the whole pipeline on quick settings, in a fresh run folder.

    python car_racing/demo.py            # → runs/demo-YYYYmmdd-HHMMSS/{data,checkpoints,...}

Stages, in order (stages 1–4 call the library's stage functions with the config preset ``demo``; 5–8 run the
tool scripts as a user would; see :data:`STAGES`):

1. record autopilot driving with noise        → data/
2. train V (ConvVAE)                           → checkpoints/vision_model.pth (+ loss PNG)
3. train M (MDN-RNN)                           → checkpoints/memory_model.pth (+ loss PNG)
4. train C in M's dream (stage 4, ``train_controller_cmaes.py``): the repair loop from zero on this run's
   own V and M — C evolves in the dream only (real checks choose what to keep), C's episodes and the repair
   replays are recorded, M continues on them, C evolves in the new dream (from zero and from the kept C)
                                               → checkpoints/{memory_model,control_model_cmaes}.pth,
                                                 checkpoints/dream_loop/ (iterations, dream_loop.png)
5. the simulator: the dream-trained agent drives real tracks → prints its score line, agent_driving.mp4
6. V's reconstructions of held-out frames      → vision_reconstructions.png
7. V's video of a held-out episode             → vision_episode.mp4
8. M dreaming beside a recorded episode        → memory_dream.mp4, memory_dream_reward.png

Every stage writes only inside the run folder and reads only what earlier stages wrote there: the score line
belongs to V, M and C trained in this run from its own recording (the repo's ``data/`` and ``checkpoints/`` are
never read or written). At this scale the driver is weak; the last lines say how it compares with the shipped
agents. The recipe's quick settings are the config preset ``demo`` (car_racing/common/config.py; the resolved
config is written to the run folder as ``demo.config.toml``, so ``--config`` of it reruns any stage the same way);
what the tools show is :data:`TOOLS`. A failing stage
stops the demo with one line naming it (the traceback, if any, goes to ``error.log`` in the run folder).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from car_racing.common.cli import UsageError, run_main
from car_racing.common.config import Config, preset, replace, usable_cores, workers_of, write_resolved

# The recipe's quick settings are the config's preset ``demo`` (car_racing/common/config.py PRESETS: 24 noisy
# autopilot episodes × 500 steps + 6 random ones, V 4 epochs, M 30 epochs in small batches with dropout and a value
# head, stage 4 the repair loop from zero (later iterations also warm from the kept C), 3 iterations, population 16,
# 10 generations, checks on 3 tracks of 1000 steps, the final choice of the two best-checked iterations on 10 more
# tracks). The demo fills in the run folder's paths. One torch thread for M and C: their small batches gain little
# from a second one, and lose many times over when another process shares the 2 cores.
PRESET = "demo"
ONE_THREAD_STAGES = ("memory", "controller")

# What the demo shows after training (tools, not the recipe): flags of each tool script, run as a command.
TOOLS: dict[str, dict[str, Any]] = {
    # Held-out tracks (seeds 10000..) with a video of every episode.
    "simulator": {"episodes": 5, "max_steps": 1000, "video_scale": 3},
    "vision_png": {"columns": 8},
    "vision_video": {"max_steps": 300},
    "memory_video": {"max_steps": 300, "dream_steps": 50, "temperature": 1.0},
}

# The demo with the demo preset, timed from its first stage to its last line on a fresh clone, 2-core CPU, nothing else
# running (docs/stages.md#the-demo-make-demo); what it says it expects before it starts is scaled from this.
MEASURED: dict[str, float] = {"cores": 2, "minutes": 11.9}

# The shipped agents a user can compare with: (folder in checkpoints/pretrained/, what it is). Their scores are read
# from each one's evaluation record (checkpoints/pretrained/<folder>/evaluation.json), never typed here.
SHIPPED_AGENTS = (("dream", "trained only in M's dream, from scratch: the five stages' defaults, the loop to 6 iterations"),
                  ("reward-only", "a dream-trained C fine-tuned by real reward alone"),
                  ("default", "DAgger with the scripted expert, then real-env CMA-ES"))


@dataclass
class Args:
    """Run every stage of the pipeline on quick settings (the config preset demo) in a new run folder."""

    runs_dir: str = "runs"
    """folder in which the run folder demo-YYYYmmdd-HHMMSS is created"""


# What the run folder ends with, in the order a person would look at it (the last lines name them).
SHOWCASE = (("agent_driving.mp4", "its agent driving the held-out tracks"),
            ("memory_dream.mp4", "M dreaming beside the real frames of a recorded episode"),
            ("vision_reconstructions.png", "what V sees: held-out frames and V's reconstructions"),
            ("checkpoints/dream_loop/dream_loop.png", "the loop's curve: C's real checks and dream fitness per iteration"))


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


# --- the stages: ``run(run_dir, config, tools) -> summary line`` -----------------------------------------------


def record(run_dir: Path, config: Config, tools: Mapping[str, Any]) -> str:
    """Stage 1: autopilot episodes with noise → run_dir/data."""
    from car_racing.episodes.recording import record as record_episodes
    from car_racing.recording.recorded_data import load_recorded

    record_episodes(config)
    episodes = load_recorded(run_dir / "data", mmap=True).episodes
    rewards: dict[str, list[float]] = {}
    for episode in episodes:
        rewards.setdefault(str(episode["driver"]), []).append(float(episode["total_reward"]))
    by_driver = ", ".join(f"{driver} {len(r)} (reward mean {sum(r) / len(r):.1f})" for driver, r in rewards.items())
    return f"{len(episodes)} episodes, {sum(e['length'] for e in episodes)} steps: {by_driver}"


def vision(run_dir: Path, config: Config, tools: Mapping[str, Any]) -> str:
    """Stage 2: V on run_dir/data → run_dir/checkpoints/vision_model.pth."""
    from car_racing.training.vision import train_vision

    latest = train_vision(config)
    best = int(latest["best_epoch"]) - 1
    history = latest["history"]
    return (f"best epoch {best + 1}: val recon {history['val_recon'][best]:.1f} + KL {history['val_kl'][best]:.1f}"
            f" = {latest['best_val_loss']:.1f} per image (β at the end {history['beta'][-1]:.2f})")


def memory(run_dir: Path, config: Config, tools: Mapping[str, Any]) -> str:
    """Stage 3: M on V's latents → run_dir/checkpoints/memory_model.pth."""
    from car_racing.training.memory import train_memory

    best = train_memory(config)
    epoch, history = int(best["epoch"]), best["history"]
    return (f"best epoch {epoch}: val MDN NLL {history['val_mdn'][epoch - 1]:.3f} per latent dim, reward MSE "
            f"{history['val_reward'][epoch - 1]:.3f}, done BCE {history['val_done'][epoch - 1]:.4f}")


def controller(run_dir: Path, config: Config, tools: Mapping[str, Any]) -> str:
    """Stage 4: C in M's dream from zero (the repair loop) on this run's V and M → run_dir/checkpoints (M, C)."""
    from car_racing.training.controller import train_controller

    final = train_controller(replace(config, run__progress=False))  # the loop's own lines say where it is
    training = final["training"]
    start = training["warm_start"]
    if config.loop.iterations > 1 and config.cmaes.init == "zero" and config.loop.controller_start != "zero":
        start = f"zero; each later iteration from the loop's own kept C ({config.loop.controller_start})"
    return (f"C trained only in the dream ({training['fitness_source']}, from {start}); "
            f"kept: {final['model_source']}, real check {final['best_real_score']:.1f}")


def run_tool(script: str, flags: Mapping[str, Any], run_dir: Path) -> list[str]:
    """``python car_racing/SCRIPT --flag value …`` as a user would run it, its output passed through; returns its
    output lines. A failure is one :class:`UsageError` with the tool's last line (all of it in run_dir/error.log)."""
    import subprocess

    command = [sys.executable, str(Path(__file__).resolve().parent / script)]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        command += ([flag] if value is True else [f"--no-{name.replace('_', '-')}"] if value is False
                    else [flag, str(value)])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    if process.wait() != 0:
        (run_dir / "error.log").write_text("$ " + " ".join(command) + "\n" + "\n".join(lines) + "\n")
        last = next((line for line in reversed(lines) if line.strip()), f"exit code {process.returncode}")
        raise UsageError(f"{script}: {last.strip()} (its output in {run_dir / 'error.log'})")
    return lines


def simulator(run_dir: Path, config: Config, tools: Mapping[str, Any]) -> str:
    """Stage 5: the dream-trained agent drives held-out tracks; its score line, and a video → agent_driving.mp4."""
    lines = run_tool("car_racing_gameplay_simulator.py",
                     {"checkpoint_dir": run_dir / "checkpoints", "video": run_dir / "agent_driving.mp4",
                      "workers": workers_of(config.run), "progress": False, **tools["simulator"]}, run_dir)
    return next((line for line in reversed(lines) if line.startswith("score:")), "no score line")


def vision_png(run_dir: Path, config: Config, tools: Mapping[str, Any]) -> str:
    """Stage 6: held-out frames, V's reconstructions and samples → run_dir/vision_reconstructions.png."""
    out = run_dir / "vision_reconstructions.png"
    run_tool("visualize_vision_model.py", {"checkpoint_dir": run_dir / "checkpoints", "data_dir": run_dir / "data",
                                           "out": out, "seed": config.run.seed, **tools["vision_png"]}, run_dir)
    return out.name


def vision_video(run_dir: Path, config: Config, tools: Mapping[str, Any]) -> str:
    """Stage 7: a held-out episode and V's reconstruction side by side → run_dir/vision_episode.mp4."""
    out = run_dir / "vision_episode.mp4"
    run_tool("visualize_vision_video.py", {"checkpoint_dir": run_dir / "checkpoints", "data_dir": run_dir / "data",
                                           "out": out, **tools["vision_video"]}, run_dir)
    return out.name


def memory_video(run_dir: Path, config: Config, tools: Mapping[str, Any]) -> str:
    """Stage 8: M dreams beside a recorded episode → run_dir/memory_dream.mp4 and memory_dream_reward.png."""
    lines = run_tool("visualize_memory_prediction.py",
                     {"checkpoint_dir": run_dir / "checkpoints", "data_dir": run_dir / "data",
                      "out": run_dir / "memory_dream.mp4", "seed": config.run.seed, **tools["memory_video"]}, run_dir)
    return next((line.strip() for line in reversed(lines) if "reward" in line and "MSE" in line), "memory_dream.mp4")


@dataclass
class Stage:
    """One step of the pipeline: ``run(run_dir, config, tools)`` reads and writes only under ``run_dir`` and
    returns a one-line summary; ``key`` names its config section (stages 1–4) or its entry in ``tools``."""

    name: str
    key: str
    run: Callable[[Path, Config, Mapping[str, Any]], str]


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
RECIPE_STAGES = ("record", "vision", "memory", "controller")  # the config's stages; the rest are TOOLS


def demo_config(run_dir: Path, config: Config | None = None) -> Config:
    """The demo's config (default: the preset ``demo``) with the run folder's paths."""
    config = preset(PRESET) if config is None else config
    return replace(config, run__data_dir=str(run_dir / "data"), run__checkpoint_dir=str(run_dir / "checkpoints"))


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


def run_stages(run_dir: Path, config: Config, tools: Mapping[str, Any] | None = None,
               stages: list[Stage] | None = None) -> list[tuple[Stage, float, str]]:
    """Run the stages in order in ``run_dir`` with ``config`` (its paths in ``run_dir``) and ``tools`` (default
    :data:`TOOLS`); returns (stage, seconds, summary) for each. A failure raises one :class:`UsageError` naming the
    stage (traceback of unexpected errors → run_dir/error.log)."""
    import torch

    stages = STAGES if stages is None else stages
    tools = TOOLS if tools is None else tools
    missing = [stage.key for stage in stages if stage.key not in RECIPE_STAGES and stage.key not in tools]
    if missing:
        raise UsageError(f"the demo's tools have no settings for {', '.join(missing)}")
    threads = torch.get_num_threads()
    done = []
    for number, stage in enumerate(stages, start=1):
        print(f"\n=== [{number}/{len(stages)}] {stage.name} ===", flush=True)
        torch.set_num_threads(threads)  # a stage's thread choice must not leak into the next one
        started = time.perf_counter()
        stage_config = replace(config, run__threads=1) if stage.key in ONE_THREAD_STAGES else config
        try:
            summary = stage.run(run_dir, stage_config, tools)
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
    lines.append("The shipped agents, for comparison (their evaluation records, "
                 "checkpoints/pretrained/*/evaluation.json):")
    lines += [f"  checkpoints/pretrained/{name}: {shipped_score(name)}; {what}" for name, what in SHIPPED_AGENTS]
    lines.append("  drive one: python car_racing/car_racing_gameplay_simulator.py --checkpoint-dir "
                 "checkpoints/pretrained/dream --render")
    return "\n".join(lines)


def main(args: Args, config: Config | None = None, tools: Mapping[str, Any] | None = None) -> Path:
    """Run the demo (``config`` defaults to the preset ``demo``, ``tools`` to :data:`TOOLS`; tests pass tiny ones);
    returns the run folder."""
    started = time.perf_counter()
    run_dir = new_run_dir(Path(args.runs_dir))
    quick = config is None
    config = demo_config(run_dir, config)
    tools = TOOLS if tools is None else tools
    resolved = write_resolved(config, run_dir / "demo.config.toml")
    (run_dir / "tools.json").write_text(json.dumps(tools, indent=1))
    print(f"demo run folder: {run_dir}  (settings: the config preset {config.preset!r}, resolved in {resolved.name}; "
          f"rerun a stage with --config {resolved})")
    if quick:
        print(expectation(usable_cores(), os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0), flush=True)
    done = run_stages(run_dir, config, tools)
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
            print(verdict(summary, tools["simulator"].get("episodes"), kept))
    print("\nwatch it:")
    for path, what in SHOWCASE:
        if (run_dir / path).is_file():
            print(f"  {run_dir / path}  {what}")
    print(f"everything is in {run_dir}")
    return run_dir


if __name__ == "__main__":
    run_main(main, Args)
