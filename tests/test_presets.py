"""Stages 1–3: the new defaults, and ``--preset seed``, which gives back exactly the seed repo's settings."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from car_racing import recorded_frames, train_memory, train_vision
from car_racing.common.cli import parse_args, preset_args
from car_racing.recording.recorded_data import load_recorded

REPO = Path(__file__).resolve().parent.parent

# The seed repo's values, written out here (not read from the scripts' PRESETS), with their original types.
SEED = {
    recorded_frames: {"episodes": 20, "steps": 500, "random_episodes": 0},
    train_vision: {"epochs": 100, "kl_anneal_epochs": 100, "free_bits": 0.0, "lr": 1e-4, "batch_size": 100},
    train_memory: {"epochs": 20, "dropout": 0.0, "value_discount": 0.0},
}
NEW_DEFAULTS = {
    recorded_frames: {"episodes": 64, "steps": 1000, "random_episodes": 16},
    train_vision: {"epochs": 6, "kl_anneal_epochs": 3.0, "free_bits": 0.5, "lr": 1e-4, "batch_size": 100},
    train_memory: {"epochs": 25, "dropout": 0.05, "value_discount": 0.98},
}
SCRIPTS = list(SEED)


def values(args) -> dict:
    return dataclasses.asdict(args)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__.split(".")[-1])
def test_the_defaults_are_the_new_recipe(script):
    args = script.Args()
    assert {name: getattr(args, name) for name in NEW_DEFAULTS[script]} == NEW_DEFAULTS[script]
    assert args.preset is None
    assert parse_args(script.Args, []) == args  # the command line without flags gives the same


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__.split(".")[-1])
def test_preset_seed_sets_exactly_the_seeds_values_and_nothing_else(script):
    args = parse_args(script.Args, ["--preset", "seed"])
    for name, value in SEED[script].items():
        assert getattr(args, name) == value and type(getattr(args, name)) is type(value), name
    changed = {name for name, value in values(args).items() if value != getattr(script.Args(), name)}
    assert changed <= set(SEED[script]) | {"preset"} and args.preset == "seed"
    assert preset_args(script.Args, "seed") == args  # from Python: the same values


@pytest.mark.parametrize("script, flag, name, value", [
    (recorded_frames, "--episodes", "episodes", 7),
    (recorded_frames, "--random-episodes", "random_episodes", 3),
    (train_vision, "--epochs", "epochs", 7),
    (train_vision, "--free-bits", "free_bits", 0.25),
    (train_memory, "--dropout", "dropout", 0.1),
], ids=["recorded_frames-episodes", "recorded_frames-random", "vision-epochs", "vision-free-bits", "memory-dropout"])
def test_a_flag_given_with_the_preset_wins(script, flag, name, value):
    for argv in (["--preset", "seed", flag, str(value)], [flag, str(value), "--preset", "seed"]):
        args = parse_args(script.Args, argv)
        assert getattr(args, name) == value
        assert {k: v for k, v in values(args).items() if k != name} == \
            {k: v for k, v in values(preset_args(script.Args, "seed")).items() if k != name}
    assert preset_args(script.Args, "seed", **{name: value}) == parse_args(script.Args, ["--preset", "seed", flag,
                                                                                        str(value)])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__.split(".")[-1])
def test_help_lists_the_preset(script):
    path = f"car_racing/{script.__name__.split('.')[-1]}.py"
    result = subprocess.run([sys.executable, path, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    assert "--preset {seed}" in text and "seed: the seed repo's original settings" in text
    if script is recorded_frames:
        assert "--random-episodes RANDOM_EPISODES" in text


def record(data_dir: Path, *flags: str) -> None:
    argv = [*flags, "--steps", "30", "--seq-len", "10", "--workers", "1", "--no-progress", "--data-dir", str(data_dir)]
    recorded_frames.main(parse_args(recorded_frames.Args, argv))


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*")) if p.is_file()}


def test_random_episodes_follow_the_main_drivers_and_equal_a_separate_random_recording(tmp_path):
    record(tmp_path / "one", "--driver", "autopilot", "--episodes", "2", "--random-episodes", "1", "--seed", "5")
    data = load_recorded(tmp_path / "one")
    assert [(e["seed"], e["driver"]) for e in data.episodes] == [(5, "autopilot"), (6, "autopilot"), (7, "random")]

    record(tmp_path / "random", "--driver", "random", "--episodes", "1", "--random-episodes", "0", "--seed", "7")
    alone = load_recorded(tmp_path / "random")
    assert [e["seed"] for e in alone.episodes] == [7]
    episode = data.episode_slice(2)
    np.testing.assert_array_equal(data.frames[episode], alone.frames)
    np.testing.assert_array_equal(data.actions[episode], alone.actions)
    np.testing.assert_array_equal(data.rewards[episode], alone.rewards)

    # byte for byte what the two commands give: the main driver's episodes, then the random ones appended
    record(tmp_path / "two", "--driver", "autopilot", "--episodes", "2", "--random-episodes", "0", "--seed", "5")
    record(tmp_path / "two", "--driver", "random", "--episodes", "1", "--random-episodes", "0", "--seed", "7",
           "--append")
    assert files(tmp_path / "one") == files(tmp_path / "two")
