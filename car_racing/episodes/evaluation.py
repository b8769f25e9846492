"""An agent's evaluation record: what the simulator measured, kept beside the checkpoints it drove.

``car_racing_gameplay_simulator.py --evaluation-out PATH`` writes one JSON file (atomically) holding the score
over the tracks it drove — mean, population std, min, median, max, laps finished, every episode's return, steps
and lap — with how it was measured (track seeds, step limit, smoothing, device, the command as typed, the UTC
date, the Python/torch/gymnasium/numpy versions) and the sha256 of each checkpoint file driven. Each shipped agent
carries one, ``checkpoints/pretrained/<agent>/evaluation.json``: the demo's comparison and the README's table
read their numbers from there, and a test fails when the table or the files beside a record disagree with it
(a re-exported agent needs a new evaluation).

:func:`read_evaluation` is the one reader: a missing, unreadable or inconsistent record is a one-line
:class:`UsageError` naming the file. Nothing here imports torch at module level (the demo reads records).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from car_racing.common.cli import UsageError
from car_racing.common.runtime import atomic_path, checkpoint_paths

EVALUATION_FILE = "evaluation.json"  # the record's name beside a shipped agent's checkpoints
EVALUATION_KIND = "evaluation"
EVALUATION_FORMAT = 1
# The summary figures, each recomputed from "returns" when a record is read (a record that disagrees with itself
# was edited by hand).
SUMMARY = ("mean", "std", "min", "median", "max")
SIMULATOR = "car_racing/car_racing_gameplay_simulator.py"


def summarize(returns: Sequence[float]) -> dict[str, float]:
    """Mean, population std, min, median and max of the episodes' returns, as plain floats."""
    values = np.asarray(returns, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "median": float(np.median(values)), "max": float(values.max())}


def checkpoint_digests(checkpoint_dir: str | os.PathLike) -> dict[str, str]:
    """File name → sha256 of the agent's three checkpoint files (V, M, C) in ``checkpoint_dir``."""
    from car_racing.recording.latent_cache import file_sha256  # imports torch: only when a record is made or checked

    return {path.name: file_sha256(path) for path in checkpoint_paths(checkpoint_dir).values()}


def versions() -> dict[str, str]:
    """The versions a score depends on: Python, torch, gymnasium (the env's physics and tracks) and numpy."""
    import gymnasium
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "gymnasium": gymnasium.__version__,
            "numpy": np.__version__}


def make_evaluation(checkpoint_dir: str | os.PathLike, *, returns: Sequence[float], steps: Sequence[int],
                    laps: Sequence[bool], seeds: Sequence[int], max_steps: int, smoothing: float, device: str,
                    command: str, date: datetime.datetime | None = None) -> dict[str, Any]:
    """The record of one evaluation: the summary of ``returns`` (one per episode, in seed order), the episodes
    themselves, how they were run, and the sha256 of each checkpoint file in ``checkpoint_dir``."""
    if not (len(returns) == len(steps) == len(laps) == len(seeds)) or not returns:
        raise ValueError("one return, step count, lap flag and seed per episode, at least one episode")
    date = date or datetime.datetime.now(datetime.timezone.utc)
    return {
        "kind": EVALUATION_KIND,
        "format": EVALUATION_FORMAT,
        **summarize(returns),
        "laps_finished": int(sum(bool(lap) for lap in laps)),
        "episodes": len(returns),
        "seeds": [int(seeds[0]), int(seeds[-1])],
        "max_steps": int(max_steps),
        "smoothing": float(smoothing),
        "device": str(device),
        "returns": [float(r) for r in returns],
        "steps": [int(s) for s in steps],
        "laps": [bool(lap) for lap in laps],
        "checkpoint_dir": str(checkpoint_dir),
        "sha256": checkpoint_digests(checkpoint_dir),
        "date": date.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "versions": versions(),
    }


def write_evaluation(record: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``record`` as JSON, one field a line (the 100 returns on one line, so a diff of two records reads),
    atomically: an interrupted run never leaves half a record."""
    fields = ",\n".join(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}" for key, value in record.items())
    with atomic_path(path) as tmp:
        tmp.write_text("{\n" + fields + "\n}\n")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_evaluation(path: str | os.PathLike) -> dict[str, Any]:
    """The record in ``path``, checked: its kind and format, every field present with the right type, one return,
    step count and lap flag per episode, and the summary equal to what its returns give. Anything else is a
    one-line :class:`UsageError` naming the file and what to rerun."""
    path = Path(path)
    rerun = f"rerun {SIMULATOR} --evaluation-out {path}"
    if not path.is_file():
        raise UsageError(f"{path}: no evaluation record here; {rerun}")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{path}: not a readable evaluation record ({reason}); {rerun}") from None
    if not isinstance(record, dict) or record.get("kind") != EVALUATION_KIND:
        found = record.get("kind") if isinstance(record, dict) else type(record).__name__
        raise UsageError(f"{path}: not an evaluation record (kind {found!r}); {rerun}")
    if record.get("format") != EVALUATION_FORMAT:
        raise UsageError(f"{path}: evaluation record format {record.get('format')!r}, this code reads "
                         f"{EVALUATION_FORMAT}; {rerun}")
    fields = {**{name: _number for name in SUMMARY}, "smoothing": _number,
              "laps_finished": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              "episodes": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "max_steps": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "seeds": lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(s, int) for s in v),
              "returns": lambda v: isinstance(v, list) and all(_number(r) for r in v),
              "steps": lambda v: isinstance(v, list) and all(isinstance(s, int) for s in v),
              "laps": lambda v: isinstance(v, list) and all(isinstance(lap, bool) for lap in v),
              "sha256": lambda v: isinstance(v, dict) and all(isinstance(d, str) for d in v.values()),
              **{name: lambda v: isinstance(v, str) for name in ("date", "command", "device", "checkpoint_dir")},
              "versions": lambda v: isinstance(v, dict)}
    bad = [name for name, ok in fields.items() if name not in record or not ok(record[name])]
    if bad:
        raise UsageError(f"{path}: evaluation record with missing or malformed {', '.join(bad)}; {rerun}")
    episodes = record["episodes"]
    if not (len(record["returns"]) == len(record["steps"]) == len(record["laps"]) == episodes):
        raise UsageError(f"{path}: evaluation record of {episodes} episodes holds {len(record['returns'])} returns, "
                         f"{len(record['steps'])} step counts and {len(record['laps'])} lap flags; {rerun}")
    if record["seeds"][1] - record["seeds"][0] + 1 != episodes:
        raise UsageError(f"{path}: evaluation record of {episodes} episodes names seeds {record['seeds'][0]}.."
                         f"{record['seeds'][1]}; {rerun}")
    expected = {**summarize(record["returns"]), "laps_finished": sum(record["laps"])}
    differ = [f"{name} {record[name]} (its episodes give {value:.4f})" for name, value in expected.items()
              if not math.isclose(record[name], value, rel_tol=0, abs_tol=1e-6)]
    if differ:
        raise UsageError(f"{path}: evaluation record disagrees with its own episodes: {'; '.join(differ)}; {rerun}")
    return record


def stale_files(record: Mapping[str, Any], checkpoint_dir: str | os.PathLike) -> list[str]:
    """The checkpoint files in ``checkpoint_dir`` that are not the ones ``record`` measured (a changed, missing or
    extra sha256): empty when the record belongs to the agent beside it."""
    from car_racing.recording.latent_cache import file_sha256

    now = {path.name: file_sha256(path) if path.is_file() else None
           for path in checkpoint_paths(checkpoint_dir).values()}
    measured = dict(record["sha256"])
    return sorted(name for name in set(now) | set(measured) if now.get(name) != measured.get(name))
