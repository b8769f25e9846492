"""Every real check is data for M: the dream loop's real-env checks, replayed into the recording.

A CMA-ES run checks candidates in the real env (:meth:`car_racing.training.cmaes_run.Run.check`): each checked
parameter set drives the fixed check tracks, and the run's checkpoint keeps, per check, every track's return and
the actions the env received (``checked[i]["seeds"]``, ``["returns"]``, ``["actions"]``). A seeded CarRacing
episode re-simulates exactly from its seed and its actions, so replaying them re-creates the check episode,
frames included, without V, M or C. Until now those episodes were driven and thrown away.

Which ones M gets: the checked Cs are the ones the dream paid most (each check's best candidate) and CMA's
mean. Where such a C leaves the road on a real track, the dream had paid for driving that reality punishes —
exactly the behaviour M misjudges. :func:`plan_check_replays` takes each checked parameter set after generation 0
(generation 0 checks the run's start: the previous kept C, already recorded with noise by the loop, or all zeros),
its worst track (its failure), and keeps the ``count`` worst of those. :func:`record_check_replays` appends them
as driver ``check`` with ``{"check_iteration", "check_trial", "run", "generation", "check_source",
"check_return"}`` in their meta (``noise``), so a rerun after an interruption records only the trials not yet in
the data, never one twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from car_racing.recording.recorded_data import RecordedEpisode, recorded_trials
from car_racing.training.repair import replay, replaying_into
from car_racing.world.envs import make_env

CHECK_DRIVER = "check"


@dataclass
class CheckReplay:
    """One check episode to replay: which run and check it came from, its track and the env's actions."""

    trial: int
    run: str
    check: int  # index in the run's ``checked`` list
    generation: int
    source: str
    seed: int
    check_return: float
    actions: np.ndarray  # float32 (T, 3)


def plan_check_replays(runs: Mapping[str, Sequence[dict]], count: int) -> list[CheckReplay]:
    """The ``count`` check episodes to replay from ``runs`` (run name → its checkpoint's ``checked`` list): per
    checked parameter set after generation 0, its worst track; the worst of those first (ties: run name, then check
    order). Checks saved without actions (runs from before they were kept) are skipped."""
    worst = []
    for run in sorted(runs):
        for index, check in enumerate(runs[run]):
            if int(check["generation"]) == 0 or not check.get("actions"):
                continue
            track = int(np.argmin(check["returns"]))
            worst.append((float(check["returns"][track]), run, index, track, check))
    worst.sort(key=lambda item: item[:3])
    return [CheckReplay(trial, run, index, int(check["generation"]), str(check["source"]), int(check["seeds"][track]),
                        value, np.asarray(check["actions"][track], dtype=np.float32))
            for trial, (value, run, index, track, check) in enumerate(worst[:count])]


def recorded_check_replays(data_dir: str | Path, iteration: int) -> set[int]:
    """The trials of ``iteration``'s check replays already in the data."""
    return recorded_trials(data_dir, CHECK_DRIVER, "check_iteration", "check_trial", iteration)


def record_check_replays(data_dir: str | Path, plan: Sequence[CheckReplay], iteration: int, *,
                         make_environment: Callable[[], Any] = make_env, progress: bool = False) -> dict:
    """Replay the planned check episodes of ``iteration`` in the real env and append them to ``data_dir`` (driver
    ``check``); trials already recorded are skipped. Returns per recorded trial the check's return and the replay's
    (equal: the replay re-creates the episode; a difference would mean the env is not deterministic here)."""
    from tqdm.auto import tqdm

    done = recorded_check_replays(data_dir, iteration)
    rows = []
    with replaying_into(data_dir, make_environment) as (store, env):
        for item in tqdm(plan, desc="check replays", unit="ep", disable=not progress):
            if item.trial in done:
                continue
            result = replay(env, item.seed, item.actions)
            store.add(RecordedEpisode(seed=item.seed, driver=CHECK_DRIVER, frames=result.frames, actions=result.actions,
                                      rewards=result.rewards, lap_finished=result.lap_finished,
                                      terminated=result.terminated,
                                      noise={"check_iteration": iteration, "check_trial": item.trial, "run": item.run,
                                             "generation": item.generation, "check_source": item.source,
                                             "check_return": item.check_return}))
            rows.append({"trial": item.trial, "run": item.run, "generation": item.generation, "seed": item.seed,
                         "check_return": item.check_return, "replay_return": result.total_reward,
                         "steps": result.steps})
    return {"planned": len(plan), "recorded_now": len(rows), "already_recorded": len(done & {p.trial for p in plan}),
            "rows": rows}
