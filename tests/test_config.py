"""The one config (car_racing/common/config.py): presets as data, TOML round trips, one-line errors, stage 4's flags."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from car_racing.common import config as C
from car_racing.training.controller import no_effect

REPO = Path(__file__).resolve().parent.parent
STAGE4 = ("run", "dream", "cmaes", "checks", "loop")

# The seed repo's stage 4, written out here (not read from PRESETS): one full-CMA-ES pass of 200 generations, 16
# dreams of 50 steps from recorded states per candidate, mean fitness, no dropout, no value bootstrap, population
# 32, σ0 0.1, checks on 4 tracks every 10 generations.
SEED_STAGE4 = {"loop.iterations": 1, "cmaes.mode": "dream", "cmaes.population": 32, "cmaes.sigma0": 0.1,
               "cmaes.generations": 200, "cmaes.diagonal": False, "cmaes.init": "zero", "dream.steps": 50,
               "dream.trials": 16, "dream.dropout": 0.0, "dream.fitness": "mean", "dream.start": "recorded",
               "dream.value": False, "dream.temperature": 1.0, "checks.every": 10, "checks.episodes": 4}


def test_preset_seed_gives_the_seeds_stage_4_exactly():
    seed = C.preset("seed")
    for key, value in SEED_STAGE4.items():
        assert C.get(seed, key) == value and type(C.get(seed, key)) is type(value), key
    parsed, given = C.parse(STAGE4, ["--preset", "seed"])
    assert parsed == seed and given == set()


def test_every_preset_round_trips_through_its_resolved_file(tmp_path):
    for name in C.PRESETS:
        config = C.preset(name, run__seed=3, dream__start_drivers=("agent", "repair"))
        path = C.write_resolved(config, tmp_path / f"{name}.config.toml")
        again, _ = C.parse(STAGE4, ["--config", str(path)])
        assert again == config, name
        assert C.toml_text(again) == path.read_text()


def test_flags_win_over_the_file_and_the_file_over_the_preset(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('preset = "demo"\n[dream]\ntrials = 7\n[cmaes]\ngenerations = 3\n')
    config, given = C.parse(STAGE4, ["--config", str(path), "--cmaes.generations", "5", "--no-dream.value"])
    assert config.preset == "demo" and config.dream.trials == 7 and config.cmaes.generations == 5
    assert config.dream.value is False and config.cmaes.population == C.preset("demo").cmaes.population
    assert given == {"cmaes.generations", "dream.value"}
    # --preset given on the command line replaces the file's preset as the base; the file's values still apply
    other, _ = C.parse(STAGE4, ["--preset", "seed", "--config", str(path)])
    assert other.preset == "seed" and other.dream.steps == 50 and other.dream.trials == 7


@pytest.mark.parametrize("text, message", [
    ("[dream]\ntrails = 3\n", "dream.trails: unknown key"),
    ("[dreams]\ntrials = 3\n", "dreams.trials: unknown key"),
    ("[dream]\ntrials = \"many\"\n", "dream.trials = 'many': expected an integer"),
    ("[dream]\ntrials = 2.5\n", "dream.trials = 2.5: expected an integer"),
    ("[dream]\nvalue = 1\n", "dream.value = 1: expected true or false"),
    ("[dream]\ndropout = 1.5\n", "dream.dropout = 1.5: expected 0 <= p < 1"),
    ("[cmaes]\npopulation = 1\n", "cmaes.population = 1: expected at least 2"),
    ("[dream]\nfitness = \"median\"\n", "dream.fitness = 'median': expected one of mean, quantile, mean-minus-std"),
    ("preset = \"nature\"\n", "--preset nature: no such preset (expected one of default, seed, demo, paper, person)"),
    ("dream = 3\n", "dream: expected a table [dream]"),
    ("[dream\n", "not valid TOML"),
])
def test_a_bad_config_file_is_one_line_naming_the_key(tmp_path, text, message, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        C.parse(STAGE4, ["--config", str(path)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and ("bad.toml" in lines[0] or "preset" in lines[0]), lines


@pytest.mark.parametrize("argv, message", [
    (["--dream.trials", "x"], "argument --dream.trials: invalid int value: 'x'"),
    (["--dream.dropout", "1.5"], "--dream.dropout 1.5: expected 0 <= p < 1"),
    (["--preset", "nature"], "--preset nature: no such preset"),
    (["--config", "nowhere.toml"], "--config nowhere.toml: no such file"),
    (["--dream.trails", "3"], "unrecognized arguments: --dream.trails 3"),
    (["--cmaes.real-trials", "3"], "--cmaes.real-trials: has no effect here (only --cmaes.mode real uses it)"),
    (["--loop.iterations", "1", "--loop.repair-episodes", "2"],
     "--loop.repair-episodes: has no effect here (--loop.iterations 1 runs one CMA-ES pass)"),
    (["--cmaes.mode", "real", "--dream.trials", "4"], "--dream.trials: has no effect here (--cmaes.mode real"),
    (["--checks.every", "0"], "--checks.every 0: the repair loop keeps the iteration whose C checks best"),
    (["--loop.iterations", "1", "--checks.every", "0", "--checks.best-candidate"],
     "--checks.best-candidate: has no effect here (--checks.every 0 checks nothing)"),
])
def test_stage_4_refuses_bad_flags_in_one_line_and_writes_nothing(tmp_path, argv, message):
    checkpoints = tmp_path / "checkpoints"
    result = subprocess.run([sys.executable, "car_racing/train_controller_cmaes.py", "--checkpoint-dir",
                             str(checkpoints), "--data-dir", str(tmp_path / "data"), *argv],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not checkpoints.exists() and not (tmp_path / "data").exists()


def test_a_config_file_may_hold_keys_that_do_nothing_here(tmp_path):
    """A resolved file holds every key; only flags given on the command line are held to having an effect."""
    path = C.write_resolved(C.preset("paper"), tmp_path / "paper.config.toml")
    config, _ = C.parse(STAGE4, ["--config", str(path)], no_effect=no_effect)
    assert config.cmaes.mode == "real" and "dream.trials" in no_effect(config)


def test_help_shows_at_most_25_settings_per_stage_and_help_all_shows_every_one():
    stages = (("recorded_frames.py", ("run", "record")), ("train_vision.py", ("run", "vision")),
              ("train_memory.py", ("run", "memory")), ("train_controller_cmaes.py", STAGE4))
    for script, sections in stages:
        shown = subprocess.run([sys.executable, f"car_racing/{script}", "--help"], cwd=REPO, capture_output=True,
                               text=True, timeout=60).stdout
        every = subprocess.run([sys.executable, f"car_racing/{script}", "--help-all"], cwd=REPO, capture_output=True,
                               text=True, timeout=60).stdout
        flags = {C.flag_of(key) for key in C.keys() if key.split(".")[0] in sections}
        user = {C.flag_of(key) for key in C.user_keys(sections)}
        assert len(user) <= 25
        assert all(f"{flag} " in shown or f"{flag}\n" in shown for flag in user)
        hidden = flags - user
        assert not any(f"  {flag} " in shown for flag in hidden if not flag.startswith("--no-"))
        assert all(flag in every for flag in flags)


def test_library_configs_are_checked_too():
    """A config built in Python (dataclasses.replace past the checks) is refused by the stage before it runs."""
    from car_racing.common.cli import UsageError
    from car_racing.training.controller import train_controller

    bad = dataclasses.replace(C.preset("default"), dream=dataclasses.replace(C.Dream(), trials=0))
    with pytest.raises(UsageError, match="dream.trials = 0: expected a positive integer"):
        train_controller(bad)
