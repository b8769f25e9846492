"""The shared plumbing: command-line parsing, checkpoints, and the recorded-data contract."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import numpy as np
import pytest
import torch

from car_racing.common.cli import UsageError, build_parser, parse_args
from car_racing.common.runtime import build_model, load_checkpoint, save_checkpoint
from car_racing.recording import recorded_data as rd


@dataclasses.dataclass
class DemoArgs:
    """A demo."""

    driver: Literal["human", "autopilot"] = "human"
    """who drives"""
    episodes: int = 20
    """how many episodes"""
    append: bool = False
    """add to the data"""
    sizes: tuple[int, ...] = (1, 2)
    """some sizes"""


def test_parser_uses_field_docstrings_and_kebab_case():
    help_text = build_parser(DemoArgs).format_help()
    assert "--driver {human,autopilot}" in help_text and "who drives" in help_text
    assert "--episodes" in help_text and "how many episodes" in help_text
    args = parse_args(DemoArgs, ["--driver", "autopilot", "--episodes", "3", "--append", "--sizes", "4", "5"])
    assert args == DemoArgs(driver="autopilot", episodes=3, append=True, sizes=(4, 5))


def test_parser_error_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(DemoArgs, ["--driver", "robot"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--driver" in err[0] and "robot" in err[0]


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="train_vision.py"):
        load_checkpoint(tmp_path / "missing.pth", "vision")
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"kind": "vision", "model_args": {"in_features": 4, "out_features": 2},
                     "model_state": torch.nn.Linear(4, 2).state_dict()}, path)
    checkpoint = load_checkpoint(path, "vision")
    assert isinstance(build_model(torch.nn.Linear, checkpoint, path), torch.nn.Linear)
    with pytest.raises(UsageError, match="expected a memory checkpoint"):
        load_checkpoint(path, "memory")
    checkpoint["model_args"] = {"in_features": 5, "out_features": 2}
    with pytest.raises(UsageError, match="does not fit Linear") as err:
        build_model(torch.nn.Linear, checkpoint, path)
    assert "\n" not in str(err.value)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(UsageError, match="truncated or corrupt") as err:
        load_checkpoint(path, "vision")
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("*.tmp*")), "atomic writes leave no temporary files"


def test_windows_never_cross_episodes_and_cover_every_end():
    starts = rd.episode_windows([0, 30, 55], [30, 25, 40], 10)
    assert starts.tolist() == [0, 10, 20, 30, 40, 45, 55, 65, 75, 85]
    ends = {0 + 30, 30 + 25, 55 + 40}
    for start in starts:
        episode_end = min(e for e in ends if e > start)
        assert start + 10 <= episode_end
    assert rd.episode_windows([0], [5], 10).size == 0


def test_load_recorded_validates_and_recovers(tiny_data_dir):
    data = rd.load_recorded(tiny_data_dir)
    assert data.frames.shape == (95, 64, 64, 3) and data.frames.dtype == np.uint8
    assert data.dones.sum() == 3 and data.dones[[29, 54, 94]].all()
    sequences = rd.load_memory_sequences(tiny_data_dir)
    assert sequences.indices.shape[1] == 10
    np.testing.assert_array_equal(sequences.actions, data.actions[sequences.indices])

    # A crash between renames leaves arrays longer than the meta: the meta wins.
    np.save(tiny_data_dir / rd.ACTIONS_FILE, np.concatenate([data.actions, data.actions[:7]]))
    assert len(rd.load_recorded(tiny_data_dir)) == 95

    np.save(tiny_data_dir / rd.REWARDS_FILE, data.rewards[:50])
    with pytest.raises(UsageError, match="holds 50 steps"):
        rd.load_recorded(tiny_data_dir)
    np.save(tiny_data_dir / rd.REWARDS_FILE, data.rewards.astype(np.float64))
    with pytest.raises(UsageError, match="expected float32"):
        rd.load_recorded(tiny_data_dir)
    (tiny_data_dir / rd.REWARDS_FILE).write_bytes(b"not a numpy file")
    with pytest.raises(UsageError, match="corrupt .npy"):
        rd.load_recorded(tiny_data_dir)

    meta = json.loads((tiny_data_dir / rd.META_FILE).read_text())
    meta["frame_shape"] = [96, 96, 3]
    (tiny_data_dir / rd.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="expected \\[64, 64, 3\\]"):
        rd.load_recorded(tiny_data_dir)


def test_replacing_store_keeps_old_data_until_commit(tiny_data_dir):
    before = (tiny_data_dir / rd.FRAMES_FILE).read_bytes()
    store = rd.EpisodeStore(tiny_data_dir, append=False)
    frames = np.zeros((12, 64, 64, 3), np.uint8)
    store.add(rd.RecordedEpisode(seed=7, driver="test", frames=frames, actions=np.zeros((12, 3), np.float32),
                                 rewards=np.ones(12, np.float32), lap_finished=True))
    assert (tiny_data_dir / rd.FRAMES_FILE).read_bytes() == before
    data = store.commit()
    assert len(data) == 12 and data.episodes[0]["total_reward"] == 12.0 and data.episodes[0]["lap_finished"]
    assert not store.pending_files()
