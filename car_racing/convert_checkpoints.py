"""Rewrite model files written before checkpoints held plain data only, once, so that they load with
``torch.load(weights_only=True)`` like every file written now.

Older checkpoints (a run of yours from before this change) held numpy arrays and numpy numbers, and a CMA-ES run's
controller checkpoint also held the CMA-ES state and the RNG states, pickled. Every loader now refuses such a file
with one line pointing here. This reads each file with ``weights_only=True``, numpy's array and scalar constructors
allowed (a file that names anything more is refused, and nothing in it runs). A CMA-ES or DAgger run's own files were
written with pickle protocol 5, which torch's ``weights_only`` reader cannot parse: those are converted only with
``--trust-own-runs`` (for runs of your own, the trust ``--resume`` places in its folder), and even then through an
unpickler that builds numpy arrays, tensors and plain containers and nothing else. Then:

- numpy arrays become tensors and numpy numbers Python numbers (the values are unchanged);
- a CMA-ES run's state (``es_state``, ``rng_state``) moves into the run's resume file beside it
  (``control_model_cmaes.resume.pkl``, read only by ``--resume``), so the run can still be continued;
- the original is kept beside it as ``NAME.pth.legacy``.

Files already in the new format are left alone; the shipped agents in ``checkpoints/pretrained/`` already are.

    python car_racing/convert_checkpoints.py                       # every *.pth under checkpoints/
    python car_racing/convert_checkpoints.py --paths runs/full/checkpoints my_run/control_model_cmaes.pth
    python car_racing/convert_checkpoints.py --trust-own-runs   # also your own CMA-ES runs' files (protocol 5)
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import dataclass
from typing import Any

import numpy as np

from car_racing.common.cli import UsageError, run_main
from car_racing.common.plain_data import Refused, load_legacy, load_plain, resume_path
from car_racing.common.runtime import link_or_copy, save_checkpoint, save_resume_state

LEGACY_SUFFIX = ".legacy"  # the original, kept beside the converted file
RESUME_KEYS = ("es_state", "rng_state")  # what only the run's own --resume needs: into the resume file


@dataclass
class Args:
    """Convert older model files (numpy arrays inside, CMA-ES state in the controller) to plain data, once."""
    paths: tuple[str, ...] = ("checkpoints",)
    """model files (*.pth) or folders to search for them (recursively)"""
    keep_original: bool = True
    """keep each original beside its converted file as NAME.pth.legacy"""
    trust_own_runs: bool = False
    """also convert CMA-ES and DAgger run files written before (pickle protocol 5, which torch's weights_only reader
    cannot parse): only for runs of your own, read as --resume reads its folder (still building nothing but
    arrays, tensors and plain containers); without it they are refused and left as they are"""


def model_files(paths: tuple[str, ...]) -> list[Path]:
    """The *.pth files named, or found under the folders named; one-line error for a path that is not there."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.pth") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{name}: no such file or folder (expected model files *.pth or a folder of them)")
    return files


def numpy_objects(value: Any) -> int:
    """How many numpy arrays and numbers ``value`` holds (what the conversion turns into tensors and numbers)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return 1
    if isinstance(value, dict):
        return sum(numpy_objects(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(numpy_objects(v) for v in value)
    return 0


def convert(path: Path, keep_original: bool, trust_own_run: bool = False) -> str:
    """Convert one older file in place; returns what was done, in words."""
    data = load_legacy(path, trust_own_run)
    done = [f"{numpy_objects(data)} numpy objects → tensors and numbers"]
    if isinstance(data, dict) and any(key in data for key in RESUME_KEYS):
        resume = resume_path(path)
        save_resume_state(data, resume)  # the whole run, as --resume reads it
        data = {key: value for key, value in data.items() if key not in RESUME_KEYS}
        # CMA's mean lives inside the pickled CMA-ES state, which is not unpickled here: the next --resume writes it
        data.setdefault("cma_mean", None)
        done.append(f"CMA-ES and RNG state → {resume}")
    if keep_original:
        backup = path.with_name(path.name + LEGACY_SUFFIX)
        link_or_copy(path, backup)
        done.append(f"original kept as {backup}")
    save_checkpoint(data, path)
    load_plain(path)  # the new file must load with weights_only=True
    return "; ".join(done)


def main(args: Args) -> dict[str, list[str]]:
    """Convert every older file among ``args.paths``; returns file lists by outcome (converted, plain, refused)."""
    outcome: dict[str, list[str]] = {"converted": [], "plain": [], "refused": []}
    refusals: list[str] = []
    files = model_files(args.paths)
    for path in files:
        try:
            load_plain(path)
            outcome["plain"].append(str(path))
            continue
        except Refused as refused:
            if not refused.legacy:
                outcome["refused"].append(str(path))
                refusals.append(str(refused))
                continue
        except Exception as err:  # truncated or corrupt: not ours to fix
            outcome["refused"].append(str(path))
            refusals.append(f"{path}: not a readable model file ({type(err).__name__})")
            continue
        try:
            print(f"converted {path}: {convert(path, args.keep_original, args.trust_own_runs)}")
        except Refused as refused:
            outcome["refused"].append(str(path))
            refusals.append(str(refused))
            continue
        outcome["converted"].append(str(path))
    print(f"{len(outcome['converted'])} converted, {len(outcome['plain'])} already plain data, "
          f"{len(outcome['refused'])} refused, of {len(files)} model files in {' '.join(args.paths)}")
    if refusals:
        more = f" (and {len(refusals) - 1} more refused)" if len(refusals) > 1 else ""
        raise UsageError(refusals[0] + more)
    return outcome


if __name__ == "__main__":
    run_main(main, Args)
