"""Stage 1: record driving episodes of CarRacing-v3 (frames, actions, rewards, dones) for the world model.

    python car_racing/recorded_frames.py --driver autopilot   # headless expert: 64 × 1000 steps, then 16 random
    python car_racing/recorded_frames.py                      # you drive (keys or gamepad), then 16 random episodes
    python car_racing/recorded_frames.py --input keyboard --episodes 5 --random-episodes 0 --append  # 5 more by hand
    python car_racing/recorded_frames.py --driver autopilot --preset seed   # the seed's 20 × 500 steps, no random

Writes the data folder described in :mod:`car_racing.recording.recorded_data` (``car_racing_recorded_*.npy``, the
meta file and the memory sequences ``car_racing_memory_dataset_*.npy``). Each finished episode is saved
at once to its own file under ``<data-dir>/.pending_episodes/``; at the end, and also on Ctrl-C or an
error, the saved episodes are merged into the arrays (only when at least one was saved: existing data is
never replaced by nothing). Without ``--append`` the new recording replaces the folder's data; with it
the new episodes are added after the existing ones, which stay byte-for-byte intact.

Seeds: episode ``i`` resets the env with ``seed + i`` and seeds its driver (autopilot noise, random
actions) with it too, so it re-simulates exactly from its seed and recorded actions. ``--seed`` defaults
to 0, or with ``--append`` to one past the largest seed already recorded, so appended episodes drive
new tracks; an explicit ``--seed`` is used as given (a note says when it repeats recorded seeds).

Random-driver episodes (``--random-episodes``, 16 by default): after the main driver's episodes, that many
episodes of the random driver are recorded headless and committed with them, their seeds continuing after
the main episodes' (``--seed 0 --episodes 64``: seeds 0..63, then random seeds 64..79). The data is
byte-for-byte that of two runs: the main driver's, then ``--driver random --seed 64 --append``.

Headless drivers (autopilot, random, agent) run in ``--workers`` processes, or Ray actors with
``--backend ray``; with several workers the episodes are stored in the order they finish (each is
identified by its seed). The human driver runs in this
process, paced at the env's 50 steps per second.

Driving by hand (:class:`car_racing.world.drivers.HumanDriver`): the window shows the env's own full-resolution
view rotating with the car, the 64×64 frame V will see (top right), the action's bars and a status line
(seed, step, reward, the episode's reward against the 800 target). Keyboard: ←/→ (or A/D) steer, ramping
towards full lock while held and back to centre on release, so a tap is a small correction; ↑ (W) gas,
ramped the same way; ↓ (S) brake. A gamepad (picked automatically when connected, ``--input``): left stick
steers, right trigger or A is gas, left trigger or B/X brakes. ``P`` (Start) pauses: nothing is recorded
while paused. After each episode a summary (reward, lap finished) waits for Enter/Space (A). Esc or closing
the window ends the session, keeping every step. What is recorded is exactly what the headless drivers
record: the 64×64 frames of the 96×96 observation, replayable from seed and actions.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Optional

from tqdm import tqdm

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import agent_dir, seed_everything
from car_racing.episodes.rollout import Backend, EpisodeResult, default_workers, run_episodes, uses_backend
from car_racing.recording.recorded_data import (
    DEFAULT_SEQ_LEN,
    EpisodeStore,
    RecordedEpisode,
    load_memory_sequences,
    pending_seeds,
)
from car_racing.world.envs import MAX_EPISODE_STEPS

DRIVERS = ("human", "autopilot", "random", "agent")
INPUTS = ("auto", "keyboard", "gamepad")


@dataclass
class Args:
    """Record CarRacing-v3 episodes (64×64 frames, actions, rewards, dones) into --data-dir."""

    driver: Literal["human", "autopilot", "random", "agent"] = "human"
    """who drives: human (keyboard or gamepad in a window; P pauses, Esc or closing it ends the session,
    keeping what was recorded), autopilot (scripted expert reading the track, with per-episode noise), random (smoothly
    varying random actions), agent (the World Models agent in --checkpoint-dir with exploration noise:
    the dream loop records C's own episodes this way)"""
    episodes: int = 64
    """number of episodes to record with --driver"""
    random_episodes: int = 16
    """then this many episodes of the random driver, recorded headless (in --workers, like any headless driver)
    and committed in the same run; their seeds continue after the main episodes' (with --seed 0 and 64 episodes:
    seeds 0..63, then 64..79). M learns from them what happens off the road and at odd actions, which a
    person's or the autopilot's driving never shows, so its dream is harder to exploit. Recorded also when the
    person ends the session early (Esc); with --driver random they are simply more episodes. 0 = off"""
    steps: int = 1000
    """maximum steps per episode (an episode also ends when the lap is finished or the car leaves the map)"""
    seed: int | None = None
    """env.reset seed of the first episode; episode i uses seed + i (also for the driver's noise).
    Default: 0, or with --append one past the largest seed already recorded"""
    data_dir: str = "data"
    """folder of the recorded data (created if needed)"""
    workers: int | None = None
    """parallel workers for the headless drivers (default: number of CPUs); the human driver runs in-process"""
    backend: Literal["processes", "ray"] = "processes"
    """where the headless drivers' episodes run: processes on this machine, or ray (actors on a local Ray or a cluster; same
    results; see docs/scaling-with-ray.md)"""
    ray_address: str = ""
    """--backend ray: auto or HOST:PORT = join a running cluster; empty = the cluster in RAY_ADDRESS when that is set,
    else a private local Ray with --workers CPUs for this run (never a cluster an earlier `ray start` left behind)"""
    append: bool = False
    """add the new episodes after the existing data instead of replacing it"""
    noise: float = 1.0
    """autopilot: maximum noise level; each episode draws its steering-noise and random-burst levels up to
    it (0 = clean, deterministic expert). agent: maximum std of the exploration noise on steer (half on gas),
    drawn per episode"""
    checkpoint_dir: Optional[str] = None
    """agent only: the V, M and C that drive (default: checkpoints/ once you have trained all three there, else the
    shipped agent in checkpoints/pretrained/default)"""
    seq_len: int = DEFAULT_SEQ_LEN
    """steps per memory-model training sequence (windows never cross an episode boundary)"""
    progress: bool = True
    """show tqdm progress bars (--no-progress for logs and notebooks)"""
    input: Literal["auto", "keyboard", "gamepad"] = "auto"
    """human only: what the person drives with: auto (a connected gamepad, else the keyboard), keyboard
    (arrows/WASD, steering and gas ramp while held) or gamepad (left stick, triggers or A/B buttons)"""
    preset: Optional[Literal["seed"]] = None
    """seed: the seed repo's original settings (20 episodes × 500 steps, no random-driver episodes); flags given
    on the command line win"""

    # Applied by the command-line parser before the flags (flags given win); from Python: cli.preset_args.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "seed": {"episodes": 20, "steps": 500, "random_episodes": 0},
    }


def validate_args(args: Args) -> None:
    """One-line :class:`UsageError` for bad flag values, before anything is touched."""
    if args.driver not in DRIVERS:
        raise UsageError(f"--driver {args.driver!r}: expected one of {', '.join(DRIVERS)}")
    if args.input not in INPUTS:
        raise UsageError(f"--input {args.input!r}: expected one of {', '.join(INPUTS)}")
    for flag, value in (("--episodes", args.episodes), ("--steps", args.steps), ("--seq-len", args.seq_len)):
        if value < 1:
            raise UsageError(f"{flag} {value}: expected a positive number")
    if args.random_episodes < 0:
        raise UsageError(f"--random-episodes {args.random_episodes}: expected 0 (off) or more")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: expected at least 1")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed {args.seed}: expected a non-negative integer (env.reset needs one)")
    if not math.isfinite(args.noise) or args.noise < 0:
        raise UsageError(f"--noise {args.noise}: expected a number >= 0 (0 = clean autopilot)")


def make_headless_driver(name: str, noise: float, checkpoint_dir: str = "checkpoints") -> Callable[[], Any]:
    """A picklable factory for a headless driver (sent to the worker processes)."""
    if name == "agent":
        from car_racing.episodes.agent import load_agent_models, make_exploring_agent

        load_agent_models(checkpoint_dir)  # one-line error for missing or unfit checkpoints, before any worker starts
        return functools.partial(make_exploring_agent, str(checkpoint_dir), noise)
    if name == "autopilot":
        from car_racing.world.autopilot import AutopilotDriver

        return functools.partial(AutopilotDriver, noise=noise)
    from car_racing.world.drivers import RandomDriver

    return RandomDriver



def choose_seeds(args: Args, store: EpisodeStore) -> list[int]:
    """``seed + i`` per episode, the main driver's then the random driver's (``--random-episodes``); the
    default seed continues after the recorded ones when appending."""
    recorded = [int(e["seed"]) for e in store.base.episodes] if store.base is not None else []
    if args.append:
        recorded += pending_seeds(store.pending_files())
    if args.seed is not None:
        first = args.seed
    else:
        first = max(recorded) + 1 if args.append and recorded else 0
    seeds = list(range(first, first + args.episodes + args.random_episodes))
    repeated = sorted(set(seeds) & set(recorded))
    if repeated:
        which = (f"seed {repeated[0]}" if len(repeated) == 1
                 else f"{len(repeated)} seeds ({repeated[0]}..{repeated[-1]})")
        print(f"note: {which} already recorded in {args.data_dir}; recording again as asked "
              f"(leave out --seed to continue after the recorded seeds)", file=sys.stderr)
    return seeds


def episode_line(number: int, total: int, driver: str, result: EpisodeResult) -> str:
    line = (f"episode {number}/{total}  seed {result.seed}  steps {result.steps}  "
            f"reward {result.total_reward:7.1f}  lap {'finished' if result.lap_finished else 'not finished'}")
    if driver in ("autopilot", "agent") and result.info:
        line += "  noise " + " ".join(f"{k}={v:.3g}" for k, v in result.info.items())
    if result.ended_by_driver:
        line += "  (ended by the driver)"
    return line


def episode_summary(number: int, total: int, result: EpisodeResult, target: float = 800.0) -> list[str]:
    """The lines the human driver sees after an episode: reward against the target, how it ended."""
    reward = result.total_reward
    if result.lap_finished:
        ending = "lap finished"
    elif result.terminated:
        ending = "lap not finished: the car left the playfield"
    else:
        ending = f"lap not finished in {result.steps} steps"
    verdict = "reaches" if reward >= target else "is below"
    return [f"Episode {number}/{total} (seed {result.seed}): reward {reward:.1f}",
            f"{ending}; the reward {verdict} the {target:.0f} target",
            "the next episode starts when you continue" if number < total else "that was the last episode"]


def _same_driver(driver: Any) -> Any:
    return driver


@dataclass
class RecordingSession:
    """What one recorder run shares across its batches of episodes: the store, the progress bar, the counts."""

    args: Args
    store: EpisodeStore
    progress: Any
    started: float = field(default_factory=time.perf_counter)
    episodes: int = 0
    steps: int = 0


def record_batch(session: RecordingSession, driver: str, make_driver: Callable[[], Any], seeds: list[int],
                 workers: int, backend: Backend, human_driver: Any = None) -> None:
    """Record one episode per seed with one driver into the session's store, each saved as it finishes.

    The main driver's episodes and then the random driver's (``--random-episodes``) are two calls of this,
    each seeded exactly as a separate recorder run with that ``--driver`` and first seed would be. Stops early
    when the person ends the session (Esc or the window closed, during an episode or at its summary).
    """
    args = session.args
    seed_everything(seeds[0], torch=driver == "agent")  # only the agent driver loads torch
    # The env's own 1000-step limit would cut longer episodes: lift it when more steps are asked for.
    env_kwargs = {"max_episode_steps": args.steps} if args.steps > MAX_EPISODE_STEPS else {}
    session.progress.set_description(f"recording ({driver})")
    # In seed order, whatever the worker count: the same --seed gives the same files with 1 worker or many, and an
    # interrupted recording keeps a run of consecutive seeds, so --append continues exactly where it stopped.
    results = run_episodes(make_driver, seeds, args.steps, workers=workers, env_kwargs=env_kwargs, backend=backend,
                           record_frames=True, ordered=True)
    with contextlib.closing(results):
        for number, result in enumerate(results, start=1):
            if result.steps > 0:
                session.store.add(RecordedEpisode(seed=result.seed, driver=driver, frames=result.frames,
                                                  actions=result.actions, rewards=result.rewards,
                                                  lap_finished=result.lap_finished, noise=result.info,
                                                  terminated=result.terminated))
                session.episodes += 1
                session.steps += result.steps
            session.progress.update(1)
            session.progress.set_postfix(steps_per_s=f"{session.steps / (time.perf_counter() - session.started):.0f}")
            tqdm.write(episode_line(number, len(seeds), driver, result))
            if result.ended_by_driver:
                tqdm.write("session ended by the driver; keeping every step recorded so far")
                return
            if human_driver is not None and not human_driver.show_summary(
                    episode_summary(number, len(seeds), result)):
                tqdm.write("session ended by the driver after the episode summary; keeping every step")
                return


@uses_backend
def main(args: Args) -> None:
    validate_args(args)
    human = args.driver == "human"
    if human:
        from car_racing.world.drivers import check_display

        check_display()
    headless_workers = args.workers or default_workers()
    if human and args.workers is not None and args.workers > 1 and not args.random_episodes:
        print("note: the human driver runs in this process; --workers is ignored", file=sys.stderr)
    if not human and args.input != "auto":
        print(f"note: --input is for --driver human; ignored with --driver {args.driver}", file=sys.stderr)
    if args.driver == "agent":
        args.checkpoint_dir = agent_dir(args.checkpoint_dir)  # yours, else the shipped agent
    make_driver: Callable[[], Any] | None = (None if human else
                                             make_headless_driver(args.driver, args.noise, args.checkpoint_dir))
    # Checks the folder is writable, and with --append validates the existing data (frame size, .npy files).
    store = EpisodeStore(args.data_dir, append=args.append, seq_len=args.seq_len)
    seeds = choose_seeds(args, store)
    main_seeds, random_seeds = seeds[:args.episodes], seeds[args.episodes:]

    human_driver = None
    if human:  # opened last, after every check: the window appears only when recording can start
        from car_racing.world import drivers

        human_driver = drivers.HumanDriver(input_kind=args.input)
        make_driver = functools.partial(_same_driver, human_driver)  # in-process (workers == 1)
    session = RecordingSession(args, store, tqdm(total=len(seeds), unit="ep", desc=f"recording ({args.driver})",
                                                 dynamic_ncols=True, disable=not args.progress))
    try:
        record_batch(session, args.driver, make_driver, main_seeds, 1 if human else headless_workers,
                     Backend() if human else Backend.from_args(args), human_driver)
        if human_driver is not None:
            human_driver.close()  # the person's part is over (finished or ended early): the window goes
            human_driver = None
        if random_seeds:  # also after a session the person ended early: what was recorded is kept, and these added
            tqdm.write(f"then {len(random_seeds)} random-driver episodes (seeds {random_seeds[0]}..{random_seeds[-1]};"
                       f" --random-episodes)")
            record_batch(session, "random", make_headless_driver("random", args.noise, args.checkpoint_dir),
                         random_seeds, headless_workers, Backend.from_args(args))
    finally:
        session.progress.close()
        if human_driver is not None:
            human_driver.close()
        _commit(store, args, session.episodes, session.steps, time.perf_counter() - session.started)


def _commit(store: EpisodeStore, args: Args, episodes: int, steps: int, seconds: float) -> None:
    """Merge the saved episodes into the data folder (never replaces existing data with nothing)."""
    if not store.pending_files():
        print(f"nothing recorded; {args.data_dir} left unchanged", file=sys.stderr)
        return
    data = store.commit()
    sequences = len(load_memory_sequences(args.data_dir).indices)
    print(f"saved {episodes} new episodes ({steps} steps, {steps / max(seconds, 1e-9):.0f} steps/s) to "
          f"{args.data_dir}: now {len(data.episodes)} episodes, {len(data)} steps, {sequences} memory "
          f"sequences of {args.seq_len} steps")
    if sequences == 0:
        print(f"warning: no memory sequences: every episode is shorter than --seq-len {args.seq_len}",
              file=sys.stderr)


if __name__ == "__main__":
    run_main(main, Args)
