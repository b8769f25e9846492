"""Stage 1 as a library function: :func:`record` drives CarRacing-v3 episodes and saves them (frames, actions,
rewards, dones) into ``config.run.data_dir`` for the world model.

It writes the data folder described in :mod:`car_racing.recording.recorded_data` (``car_racing_recorded_*.npy``,
the meta file and the memory windows ``car_racing_memory_dataset_*.npy``) and, beside them, the resolved config
``record.config.toml``. Each finished episode is saved at once to its own file under
``<data_dir>/.pending_episodes/``; at the end, and also on Ctrl-C or an error, the saved episodes are merged into
the arrays (only when at least one was saved: existing data is never replaced by nothing). Without
``record.append`` the new recording replaces the folder's data; with it the new episodes are added after the
existing ones, which stay byte-for-byte intact.

Seeds: episode ``i`` resets the env with ``run.seed + i`` and seeds its driver (autopilot noise, random actions)
with it too, so it re-simulates exactly from its seed and recorded actions. With ``record.append`` and
``run.seed`` 0 (the default) the recording continues one past the largest seed already recorded (or left
pending), so appended episodes drive new tracks; any other ``run.seed`` is used as given (a note says when it
repeats recorded seeds). (Before the one config this default was "no seed"; seed 0 itself can no longer be
appended to a folder that already holds episodes.)

Random-driver episodes (``record.random_episodes``): after the main driver's episodes, that many episodes of
the random driver are recorded headless and committed with them, their seeds continuing after the main
episodes' (seed 0 and 64 episodes: seeds 0..63, then random seeds 64..79). The data is byte-for-byte that of
two runs: the main driver's, then ``record.driver = random`` from seed 64 with ``record.append``.

Where a person stands: after each episode a line says how much driving is recorded (episodes, frames, minutes;
with ``record.append`` the folder's earlier episodes too) against what the defaults record (``record.episodes`` ×
``record.steps``); the human driver's window shows it too. When the recorder ends (also on Ctrl-C or an error),
after the merge, it prints the data summary of the whole recording (:mod:`car_racing.recording.summary`: share
of frames on the road, recoveries from the grass, speed, steering, braking) with a warning for each way the
data is too narrow for a working dream. At the start a note says what the folder already holds and whether
this run adds to it or replaces it.

Headless drivers (autopilot, random, agent, keyboard) run in ``run.workers`` processes (0 = one per CPU), or Ray actors
with ``run.backend = ray``; the episodes are stored in seed order whatever the worker count. The human driver
runs in this process, paced at the env's 50 steps per second (:class:`car_racing.world.drivers.HumanDriver`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from tqdm import tqdm

from car_racing.common.config import Config, ConfigError, flag_of, resolved_path, validate, write_resolved
from car_racing.common.runtime import USER_CHECKPOINT_DIR, agent_dir, seed_everything
from car_racing.episodes import backends
from car_racing.episodes.backends import RayClusterLost, going_on
from car_racing.episodes.rollout import Backend, EpisodeResult, backend_session, default_workers, run_episodes
from car_racing.recording.recorded_data import (EpisodeStore, RecordedEpisode, has_recorded_data, load_memory_sequences,
                                                load_recorded, pending_seeds)
from car_racing.recording.summary import ENV_FPS, amount_line, format_summary, summarize
from car_racing.world.envs import MAX_EPISODE_STEPS

DRIVERS = ("human", "autopilot", "random", "agent", "keyboard")
INPUTS = ("auto", "keyboard", "gamepad")
STAGE = "record"  # the resolved config: DATA_DIR/record.config.toml
GOING_ON = going_on("recorded_frames", resumable=False)  # what a lost Ray cluster leaves, and how to go on


def check(config: Config) -> None:
    """One-line :class:`ConfigError` for values stage 1 cannot use, before anything is touched."""
    validate(config)
    run, rec = config.run, config.record
    if rec.driver not in DRIVERS:
        raise ConfigError(f"record.driver = {rec.driver!r}: expected one of {', '.join(DRIVERS)}")
    if rec.input not in INPUTS:
        raise ConfigError(f"record.input = {rec.input!r}: expected one of {', '.join(INPUTS)}")
    if run.seed < 0:
        raise ConfigError(f"run.seed = {run.seed}: expected a non-negative integer (env.reset needs one)")


def make_headless_driver(name: str, noise: float, checkpoint_dir: str = USER_CHECKPOINT_DIR, *,
                         reaction_steps: int | None = None, mistakes: float | None = None,
                         rescue: int = 0, holds: float = 0.0, style: str = "brownian") -> Callable[[], Any]:
    """A picklable factory for a headless driver (sent to the worker processes); ``reaction_steps`` and
    ``mistakes`` are the keyboard driver's (``None``: its defaults), ``rescue`` the agent's (see
    :class:`car_racing.episodes.agent.ExploringAgent`), ``holds`` the autopilot's, ``style`` the random driver's."""
    if name == "keyboard":
        from car_racing.world.keyboard_driver import KeyboardDriver

        settings = {"reaction_steps": reaction_steps, "mistakes": mistakes}
        return functools.partial(KeyboardDriver, **{k: v for k, v in settings.items() if v is not None})
    if name == "agent":
        from car_racing.episodes.agent import load_agent_models, make_exploring_agent

        load_agent_models(checkpoint_dir)  # one-line error for missing or unfit checkpoints, before any worker starts
        return functools.partial(make_exploring_agent, str(checkpoint_dir), noise, rescue)
    if name == "autopilot":
        from car_racing.world.autopilot import AutopilotDriver

        return functools.partial(AutopilotDriver, noise=noise, holds=holds)
    from car_racing.world.drivers import RandomDriver

    return functools.partial(RandomDriver, style=style)


def driving_agent(config: Config) -> str:
    """The folder the agent driver loads V, M and C from: ``run.checkpoint_dir``; its default ``checkpoints``
    once you have trained all three there, else the shipped agent (:func:`car_racing.common.runtime.agent_dir`)."""
    given = config.run.checkpoint_dir
    return agent_dir(None if given == USER_CHECKPOINT_DIR else given)


def choose_seeds(config: Config, store: EpisodeStore) -> list[int]:
    """``run.seed + i`` per episode, the main driver's then the random driver's (``record.random_episodes``);
    with ``record.append`` the default seed 0 continues one past the largest recorded seed."""
    run, rec = config.run, config.record
    recorded = [int(e["seed"]) for e in store.base.episodes] if store.base is not None else []
    if rec.append:
        recorded += pending_seeds(store.pending_files())
    first = max(recorded) + 1 if rec.append and run.seed == 0 and recorded else run.seed
    seeds = list(range(first, first + rec.episodes + rec.random_episodes))
    repeated = sorted(set(seeds) & set(recorded))
    if repeated:
        which = (f"seed {repeated[0]}" if len(repeated) == 1
                 else f"{len(repeated)} seeds ({repeated[0]}..{repeated[-1]})")
        print(f"note: {which} already recorded in {run.data_dir}; recording again as asked "
              f"(--seed 0 with --record.append continues after the recorded seeds)", file=sys.stderr)
    return seeds


def episode_line(number: int, total: int, driver: str, result: EpisodeResult) -> str:
    line = (f"episode {number}/{total}  seed {result.seed}  steps {result.steps}  "
            f"reward {result.total_reward:7.1f}  lap {'finished' if result.lap_finished else 'not finished'}")
    if driver in ("autopilot", "agent", "keyboard") and result.info:
        line += "  " + " ".join(f"{k}={v:.3g}" for k, v in result.info.items())
    if result.ended_by_driver:
        line += "  (ended by the driver)"
    return line


def episode_summary(number: int, total: int, result: EpisodeResult, target: float = 800.0,
                    recorded: str = "") -> list[str]:
    """The lines the human driver sees after an episode: reward against the target, how it ended, and
    ``recorded`` (how much is recorded, :func:`car_racing.recording.summary.amount_line`) when given."""
    reward = result.total_reward
    if result.lap_finished:
        ending = "lap finished"
    elif result.terminated:
        ending = "lap not finished: the car left the playfield"
    else:
        ending = f"lap not finished in {result.steps} steps"
    verdict = "reaches" if reward >= target else "is below"
    return [f"Episode {number}/{total} (seed {result.seed}): reward {reward:.1f}",
            f"{ending}; the reward {verdict} the {target:.0f} target", *([recorded] if recorded else []),
            "the next episode starts when you continue" if number < total else "that was the last episode"]


def _same_driver(driver: Any) -> Any:
    return driver


@dataclass
class RecordingSession:
    """What one recorder run shares across its batches of episodes: the store, the progress bar, the counts."""

    config: Config
    store: EpisodeStore
    progress: Any
    started: float = field(default_factory=time.perf_counter)
    episodes: int = 0
    steps: int = 0
    driven_before: tuple[int, int] = (0, 0)  # (episodes, frames) of driving the folder already holds and keeps
    driven: tuple[int, int] = (0, 0)  # (episodes, frames) of driving this run added (the random driver's aside)

    def amount(self, short: bool = False) -> str:
        """How much driving is recorded, this run's and what the folder keeps, against what the defaults record."""
        return amount_line(self.driven_before[0] + self.driven[0], self.driven_before[1] + self.driven[1],
                           short=short)


def driving_in(store: EpisodeStore, main_driver: str) -> tuple[int, int]:
    """(episodes, frames) of driving in the recording a store appends to: every driver's but the random one's
    (all of them when the main driver is ``random``); (0, 0) when the store replaces the recording."""
    if store.base is None:
        return 0, 0
    kept = [e for e in store.base.episodes if main_driver == "random" or e["driver"] != "random"]
    return len(kept), sum(int(e["length"]) for e in kept)


def existing_note(store: EpisodeStore, config: Config) -> str | None:
    """One line on what ``run.data_dir`` already holds and what this run does with it (``None``: nothing there)."""
    data_dir = config.run.data_dir
    if store.base is not None:
        episodes, frames = len(store.base.episodes), len(store.base)
        return (f"continuing {data_dir}: it holds {episodes} episodes ({frames / ENV_FPS / 60:.1f} min); the new "
                f"episodes are added after them")
    if not has_recorded_data(data_dir):
        return None
    try:
        held = load_recorded(data_dir, mmap=True)
    except Exception:  # a damaged recording is replaced: say so without reading it
        return f"note: {data_dir} holds a recording that this run replaces when it ends"
    return (f"note: {data_dir} holds {len(held.episodes)} episodes ({len(held) / ENV_FPS / 60:.1f} min) that this "
            f"run replaces when it ends; {flag_of('record.append')} keeps them and adds to them")


def record_batch(session: RecordingSession, driver: str, make_driver: Callable[[], Any], seeds: list[int],
                 workers: int, backend: Backend, human_driver: Any = None) -> None:
    """Record one episode per seed with one driver into the session's store, each saved as it finishes.

    The main driver's episodes and then the random driver's (``record.random_episodes``) are two calls of this,
    each seeded exactly as a separate recording with that driver and first seed would be. Stops early when the
    person ends the session (Esc or the window closed, during an episode or at its summary).
    """
    steps = session.config.record.steps
    counts_as_driving = driver != "random" or session.config.record.driver == "random"
    if human_driver is not None:
        human_driver.recorded_note = session.amount(short=True)
    seed_everything(seeds[0], torch=driver == "agent")  # only the agent driver loads torch
    # The env's own 1000-step limit would cut longer episodes: lift it when more steps are asked for.
    env_kwargs = {"max_episode_steps": steps} if steps > MAX_EPISODE_STEPS else {}
    session.progress.set_description(f"recording ({driver})")
    # In seed order, whatever the worker count: the same seed gives the same files with 1 worker or many, and an
    # interrupted recording keeps a run of consecutive seeds, so --record.append continues exactly where it stopped.
    results = run_episodes(make_driver, seeds, steps, workers=workers, env_kwargs=env_kwargs, backend=backend,
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
                if counts_as_driving:
                    session.driven = (session.driven[0] + 1, session.driven[1] + result.steps)
            session.progress.update(1)
            session.progress.set_postfix(steps_per_s=f"{session.steps / (time.perf_counter() - session.started):.0f}")
            tqdm.write(episode_line(number, len(seeds), driver, result))
            if counts_as_driving:
                tqdm.write(session.amount())
                if human_driver is not None:
                    human_driver.recorded_note = session.amount(short=True)
            if result.ended_by_driver:
                tqdm.write("session ended by the driver; keeping every step recorded so far")
                return
            if human_driver is not None and not human_driver.show_summary(
                    episode_summary(number, len(seeds), result, recorded=session.amount())):
                tqdm.write("session ended by the driver after the episode summary; keeping every step")
                return


def record(config: Config) -> dict[str, Any]:
    """Stage 1: record ``config.record``'s episodes into ``config.run.data_dir`` (see the module docstring).

    Returns ``{"data_dir", "seeds", "episodes", "steps", "seconds", "total_episodes", "total_steps",
    "sequences", "data_summary"}``: the episodes and steps this run added, and what the folder holds afterwards
    (the totals are ``None`` when nothing was recorded; ``data_summary`` is
    :func:`car_racing.recording.summary.summarize` of the whole recording, printed when it ends). Bad values
    raise a one-line :class:`ConfigError` (a :class:`~car_racing.common.cli.UsageError`) before anything is
    written.
    """
    check(config)
    outermost = not backends._sessions  # noqa: SLF001 (a stage inside the dream loop leaves the line to it)
    try:
        with backend_session(Backend(config.run.backend, config.run.ray_address)):
            return _record(config)
    except RayClusterLost as err:
        if not outermost:
            raise
        raise RayClusterLost(f"{err}; {GOING_ON}") from None


def _record(config: Config) -> dict[str, Any]:
    run, rec = config.run, config.record
    human = rec.driver == "human"
    if human:
        from car_racing.world.drivers import check_display

        check_display("--record.driver human", "use --record.driver autopilot")
    headless_workers = run.workers or default_workers()
    if human and run.workers > 1 and not rec.random_episodes:
        print("note: the human driver runs in this process; --workers is ignored", file=sys.stderr)
    if not human and rec.input != "auto":
        print(f"note: --record.input is for the human driver; ignored with --record.driver {rec.driver}",
              file=sys.stderr)
    checkpoint_dir = driving_agent(config) if rec.driver == "agent" else run.checkpoint_dir
    options = ({"reaction_steps": rec.reaction_steps, "mistakes": rec.mistakes} if rec.driver == "keyboard" else
               {"rescue": rec.rescue} if rec.driver == "agent" else
               {"holds": rec.holds} if rec.driver == "autopilot" else {})
    make_driver: Callable[[], Any] | None = (None if human else
                                             make_headless_driver(rec.driver, rec.noise, checkpoint_dir, **options))
    # Checks the folder is writable, and with --record.append validates the existing data (frame size, .npy files).
    store = EpisodeStore(run.data_dir, append=rec.append, seq_len=rec.seq_len)
    seeds = choose_seeds(config, store)
    note = existing_note(store, config)
    if note:
        print(note, file=sys.stderr)
    main_seeds, random_seeds = seeds[:rec.episodes], seeds[rec.episodes:]

    human_driver = None
    if human:  # opened last, after every check: the window appears only when recording can start
        from car_racing.world import drivers

        human_driver = drivers.HumanDriver(input_kind=rec.input)
        make_driver = functools.partial(_same_driver, human_driver)  # in-process (workers == 1)
    write_resolved(config, resolved_path(run.data_dir, STAGE))
    backend = Backend(run.backend, run.ray_address)
    session = RecordingSession(config, store, tqdm(total=len(seeds), unit="ep", desc=f"recording ({rec.driver})",
                                                   dynamic_ncols=True, disable=not run.progress),
                               driven_before=driving_in(store, rec.driver))
    summary: dict[str, Any] = {}
    try:
        record_batch(session, rec.driver, make_driver, main_seeds, 1 if human else headless_workers,
                     Backend() if human else backend, human_driver)
        if human_driver is not None:
            human_driver.close()  # the person's part is over (finished or ended early): the window goes
            human_driver = None
        if random_seeds:  # also after a session the person ended early: what was recorded is kept, and these added
            tqdm.write(f"then {len(random_seeds)} random-driver episodes (seeds {random_seeds[0]}..{random_seeds[-1]};"
                       f" --record.random-episodes)")
            random_driver = make_headless_driver("random", rec.noise, checkpoint_dir, style=rec.random_style)
            record_batch(session, "random", random_driver, random_seeds, headless_workers, backend)
    finally:
        session.progress.close()
        if human_driver is not None:
            human_driver.close()
        summary = _commit(store, config, seeds, session.episodes, session.steps,
                          time.perf_counter() - session.started)
    return summary


def _commit(store: EpisodeStore, config: Config, seeds: list[int], episodes: int, steps: int,
            seconds: float) -> dict[str, Any]:
    """Merge the saved episodes into the data folder (never replaces existing data with nothing), then print
    the data summary of the whole recording (:mod:`car_racing.recording.summary`)."""
    data_dir, seq_len = config.run.data_dir, config.record.seq_len
    summary: dict[str, Any] = {"data_dir": str(data_dir), "seeds": seeds, "episodes": episodes, "steps": steps,
                               "seconds": seconds, "total_episodes": None, "total_steps": None, "sequences": None,
                               "data_summary": None}
    if not store.pending_files():
        print(f"nothing recorded; the recording in {data_dir} is left unchanged", file=sys.stderr)
        return summary
    data = store.commit()
    sequences = len(load_memory_sequences(data_dir).indices)
    print(f"saved {episodes} new episodes ({steps} steps, {steps / max(seconds, 1e-9):.0f} steps/s) to "
          f"{data_dir}: now {len(data.episodes)} episodes, {len(data)} steps, {sequences} memory "
          f"sequences of {seq_len} steps")
    if sequences == 0:
        print(f"warning: no memory sequences: every episode is shorter than {flag_of('record.seq_len')} {seq_len}",
              file=sys.stderr)
    try:
        data_summary = summarize(data_dir)
    except Exception as err:  # the recording is saved: a failing summary must not hide that
        print(f"warning: no data summary ({type(err).__name__}: {err})", file=sys.stderr)
        data_summary = None
    else:
        print("\n".join(format_summary(data_summary)))
    return dict(summary, total_episodes=len(data.episodes), total_steps=len(data), sequences=sequences,
                data_summary=data_summary)
