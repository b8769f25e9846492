"""Stages 1–3 on the one config: the defaults are the new recipe, ``--preset seed`` gives exactly the seed repo's
settings and nothing else, a flag wins over the preset, ``--config`` of a stage's resolved file gives the same
config again, and bad input is one line, exit code 2, nothing written."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from car_racing import recorded_frames, train_memory, train_vision
from car_racing.common import config as cfg
from car_racing.common.config import parse, resolved_path, run_stage
from car_racing.recording.recorded_data import load_recorded

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = [recorded_frames, train_vision, train_memory]
SCRIPT_IDS = ["recorded_frames", "train_vision", "train_memory"]

# The seed repo's values, written out here (not read from config.PRESETS), with their types.
SEED = {
    recorded_frames: {"record.episodes": 20, "record.steps": 500, "record.random_episodes": 0},
    train_vision: {"vision.epochs": 100, "vision.kl_anneal_epochs": 100.0, "vision.free_bits": 0.0},
    train_memory: {"memory.epochs": 20, "memory.dropout": 0.0, "memory.value_discount": 0.0},
}
NEW_DEFAULTS = {
    recorded_frames: {"record.episodes": 64, "record.steps": 1000, "record.random_episodes": 16,
                      "record.driver": "human", "run.seed": 0, "run.data_dir": "data", "run.workers": 0},
    train_vision: {"vision.epochs": 6, "vision.kl_anneal_epochs": 3.0, "vision.free_bits": 0.5, "vision.lr": 1e-4,
                   "vision.batch_size": 100, "run.checkpoint_dir": "checkpoints", "run.resume": False},
    train_memory: {"memory.epochs": 25, "memory.dropout": 0.05, "memory.value_discount": 0.98,
                   "memory.init_from": "", "memory.vision_checkpoint": "", "memory.freeze_lstm": False},
}


def flat(config: cfg.Config, sections) -> dict:
    """The config's values in ``sections`` by dotted key."""
    return {f"{s}.{name}": value for s in sections for name, value in dataclasses.asdict(getattr(config, s)).items()}


@pytest.mark.parametrize("script", SCRIPTS, ids=SCRIPT_IDS)
def test_the_defaults_are_the_new_recipe(script):
    config, given = parse(script.SECTIONS, [])
    assert config == cfg.Config() and given == set() and config.preset == "default"
    values = flat(config, script.SECTIONS)
    assert {key: values[key] for key in NEW_DEFAULTS[script]} == NEW_DEFAULTS[script]


@pytest.mark.parametrize("script", SCRIPTS, ids=SCRIPT_IDS)
def test_preset_seed_sets_exactly_the_seeds_values_and_nothing_else(script):
    config, given = parse(script.SECTIONS, ["--preset", "seed"])
    assert config.preset == "seed" and given == set()
    values, defaults = flat(config, script.SECTIONS), flat(cfg.Config(), script.SECTIONS)
    changed = {key: value for key, value in values.items() if value != defaults[key]}
    assert changed == SEED[script]
    for key, value in SEED[script].items():
        assert type(values[key]) is type(value), key
    assert config == cfg.preset("seed")  # from Python: the same values


def test_preset_person_records_twenty_episodes_and_runs_five_warm_iterations():
    """A person's recipe (docs/driving.md), written out here: stage 1 records 20 of your episodes, stage 4 runs 5
    iterations from the last kept C only; everything else is the defaults, and the same for every stage."""
    from car_racing import train_controller_cmaes

    defaults = flat(cfg.Config(), cfg.SECTIONS)
    for script in (*SCRIPTS, train_controller_cmaes):
        config, given = parse(script.SECTIONS, ["--preset", "person"])
        changed = {k: v for k, v in flat(config, cfg.SECTIONS).items() if v != defaults[k]}
        assert config.preset == "person" and given == set()
        assert changed == {"record.episodes": 20, "loop.iterations": 5, "loop.controller_start": "warm"}


@pytest.mark.parametrize("script, flag, key, value", [
    (recorded_frames, "--record.episodes", "record.episodes", 7),
    (recorded_frames, "--record.random-episodes", "record.random_episodes", 3),
    (train_vision, "--vision.epochs", "vision.epochs", 7),
    (train_vision, "--vision.free-bits", "vision.free_bits", 0.25),
    (train_memory, "--memory.dropout", "memory.dropout", 0.1),
    (train_memory, "--seed", "run.seed", 5),
], ids=["record-episodes", "record-random", "vision-epochs", "vision-free-bits", "memory-dropout", "run-seed"])
def test_a_flag_given_with_the_preset_wins(script, flag, key, value):
    seed = cfg.preset("seed")
    for argv in (["--preset", "seed", flag, str(value)], [flag, str(value), "--preset", "seed"]):
        config, given = parse(script.SECTIONS, argv)
        assert cfg.get(config, key) == value and given == {key}
        assert {k: v for k, v in flat(config, cfg.SECTIONS).items() if k != key} == \
            {k: v for k, v in flat(seed, cfg.SECTIONS).items() if k != key}
        assert config == cfg.preset("seed", **{key.replace(".", "__"): value})


@pytest.mark.parametrize("script", SCRIPTS, ids=SCRIPT_IDS)
def test_help_lists_the_presets_and_the_sections_flags(script):
    path = f"car_racing/{script.__name__.split('.')[-1]}.py"
    result = subprocess.run([sys.executable, path, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    assert "--preset {default,seed,demo,paper,person}" in text and "--config FILE" in text and "--seed SEED" in text
    section = script.SECTIONS[1]
    assert f"--{section}.epochs" in text or f"--{section}.episodes" in text
    if script is recorded_frames:
        assert "--record.random-episodes RANDOM_EPISODES" in text


# --- --config of a resolved file ------------------------------------------------------------------------------


def record(data_dir: Path, *flags: str) -> cfg.Config:
    """Stage 1 from its command line (a tiny recording); returns the config it ran."""
    argv = [*flags, "--record.steps", "30", "--record.seq-len", "10", "--workers", "1", "--no-progress",
            "--data-dir", str(data_dir)]
    config, _ = parse(recorded_frames.SECTIONS, argv, no_effect=recorded_frames.no_effect)
    recorded_frames.main(config)
    return config


def files(folder: Path) -> dict[str, bytes]:
    """The recording's files (not the resolved config, which names the run's own flags)."""
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*")) if p.is_file() and not p.name.endswith(".toml")}


def test_random_episodes_follow_the_main_drivers_and_equal_a_separate_random_recording(tmp_path):
    config = record(tmp_path / "one", "--record.driver", "autopilot", "--record.episodes", "2",
                    "--record.random-episodes", "1", "--seed", "5")
    data = load_recorded(tmp_path / "one")
    assert [(e["seed"], e["driver"]) for e in data.episodes] == [(5, "autopilot"), (6, "autopilot"), (7, "random")]
    resolved = resolved_path(tmp_path / "one", "record")
    assert parse(recorded_frames.SECTIONS, ["--config", str(resolved)])[0] == config  # the same config again

    record(tmp_path / "random", "--record.driver", "random", "--record.episodes", "1", "--record.random-episodes", "0",
           "--seed", "7")
    alone = load_recorded(tmp_path / "random")
    assert [e["seed"] for e in alone.episodes] == [7]
    episode = data.episode_slice(2)
    np.testing.assert_array_equal(data.frames[episode], alone.frames)
    np.testing.assert_array_equal(data.actions[episode], alone.actions)
    np.testing.assert_array_equal(data.rewards[episode], alone.rewards)

    # byte for byte what the two commands give: the main driver's episodes, then the random ones appended
    record(tmp_path / "two", "--record.driver", "autopilot", "--record.episodes", "2", "--record.random-episodes", "0",
           "--seed", "5")
    record(tmp_path / "two", "--record.driver", "random", "--record.episodes", "1", "--record.random-episodes", "0",
           "--record.append")  # the default seed continues after the recorded 5, 6
    assert files(tmp_path / "one") == files(tmp_path / "two")


def test_config_of_the_resolved_files_gives_the_same_config(tiny_data_dir, tmp_path, one_torch_thread):
    from test_memory import save_tiny_vision

    checkpoints = tmp_path / "ck"
    vision_argv = ["--preset", "seed", "--data-dir", str(tiny_data_dir), "--checkpoint-dir", str(checkpoints),
                   "--vision.epochs", "1", "--vision.batch-size", "32", "--vision.latent-size", "8",
                   "--vision.val-fraction", "0.34", "--device", "cpu", "--threads", "1", "--no-progress"]
    vision_config, _ = parse(train_vision.SECTIONS, vision_argv, no_effect=train_vision.no_effect)
    latest = train_vision.main(vision_config)
    text = resolved_path(checkpoints, "vision").read_text()
    assert 'preset = "seed"' in text and "kl_anneal_epochs = 100.0" in text and "latent_size = 8" in text
    again, _ = parse(train_vision.SECTIONS, ["--config", str(resolved_path(checkpoints, "vision"))])
    assert again == vision_config and latest["config"] == cfg.as_dict(vision_config)

    memory_dir = tmp_path / "m"
    save_tiny_vision(memory_dir / "vision_model.pth")
    memory_argv = ["--data-dir", str(tiny_data_dir), "--checkpoint-dir", str(memory_dir), "--memory.epochs", "1",
                   "--memory.batch-size", "4", "--memory.hidden-size", "16", "--memory.num-mixtures", "3",
                   "--memory.value-discount", "0.5", "--device", "cpu", "--no-progress"]
    memory_config, _ = parse(train_memory.SECTIONS, memory_argv, no_effect=train_memory.no_effect)
    best = train_memory.main(memory_config)
    again, _ = parse(train_memory.SECTIONS, ["--config", str(resolved_path(memory_dir, "memory"))])
    assert again == memory_config and best["config"] == cfg.as_dict(memory_config)
    # a flag after --config still wins
    given, keys = parse(train_memory.SECTIONS, ["--config", str(resolved_path(memory_dir, "memory")),
                                                "--memory.epochs", "3"])
    assert given == cfg.replace(memory_config, memory__epochs=3) and keys == {"memory.epochs"}


# --- bad input: one line, exit code 2, nothing written -----------------------------------------------------------


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("script, argv, message", [
    (train_vision, ["--vision.epochz", "3"], "unrecognized arguments: --vision.epochz"),
    (train_vision, ["--config", "FILE:[vision]\nepoch = 3\n"], "vision.epoch: unknown key"),
    (train_memory, ["--config", "FILE:[memory]\nepochs = \"3\"\n"], "memory.epochs = '3': expected an integer"),
    (train_vision, ["--vision.epochs", "1.5"], "--vision.epochs: invalid int value"),
    (train_vision, ["--vision.epochs", "0"], "--vision.epochs 0: expected a positive integer"),
    (train_memory, ["--memory.dropout", "1.0"], "--memory.dropout 1.0: expected 0 <= p < 1"),
    (recorded_frames, ["--record.driver", "autopilot", "--record.noise", "-1"], "--record.noise -1.0: expected a noise level"),
    (recorded_frames, ["--preset", "nope"], "--preset nope: no such preset"),
    (train_memory, ["--config", "FILE:preset = \"nope\"\n"], "--preset nope: no such preset"),
    (recorded_frames, ["--record.driver", "autopilot", "--record.input", "keyboard"],
     "--record.input: has no effect here"),
    (recorded_frames, ["--record.driver", "random", "--record.noise", "0.5"], "--record.noise: has no effect here"),
    (train_memory, ["--memory.init-from", "x.pth", "--memory.hidden-size", "8"],
     "--memory.hidden-size: has no effect here"),
    (train_vision, ["--workers", "2"], "--workers: has no effect here"),
], ids=["unknown-flag", "unknown-key", "wrong-type-file", "wrong-type-flag", "out-of-range", "out-of-range-float",
        "out-of-range-noise", "unknown-preset", "unknown-preset-file", "no-effect-input", "no-effect-noise",
        "no-effect-sizes", "no-effect-workers"])
def test_bad_config_is_one_line_exit_2_and_nothing_written(script, argv, message, tmp_path, capsys):
    argv = [write_toml(tmp_path, a[5:]) if a.startswith("FILE:") else a for a in argv]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_stage(script.main, script.SECTIONS, script.__doc__, script.no_effect,
                  argv=[*argv, "--data-dir", str(out / "data"), "--checkpoint-dir", str(out / "ck"), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_bad_value_from_python_is_refused_before_anything_is_written(tmp_path):
    from car_racing.common.config import ConfigError
    from car_racing.episodes.recording import record as record_stage
    from car_racing.training.memory import train_memory as train_memory_stage
    from car_racing.training.vision import train_vision as train_vision_stage

    # config.replace does not check ranges: the stages do, before they touch anything
    out = tmp_path / "out"
    base = cfg.replace(cfg.Config(), run__data_dir=str(out / "data"), run__checkpoint_dir=str(out / "ck"))
    with pytest.raises(ConfigError, match="record.episodes = 0"):
        record_stage(cfg.replace(base, record__driver="autopilot", record__episodes=0))
    with pytest.raises(ConfigError, match="run.seed = -1"):
        record_stage(cfg.replace(base, record__driver="autopilot", run__seed=-1))
    with pytest.raises(ConfigError, match="vision.lr = 0.0"):
        train_vision_stage(cfg.replace(base, vision__lr=0.0))
    with pytest.raises(ConfigError, match="memory.value_discount = 1.0"):
        train_memory_stage(cfg.replace(base, memory__value_discount=1.0))
    assert not out.exists()
