"""bench/person_curve.py (issue 35's curve): a point runs the user's path stage by stage as subprocesses, times each,
goes on after an interruption without redoing a finished stage, and the plot reads the points back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import person_curve
from car_racing.common.cli import UsageError

TINY = """
[run]
workers = 1
threads = 1
[record]
random_episodes = 1
steps = 40
seq_len = 10
[vision]
epochs = 1
kl_anneal_epochs = 1
batch_size = 40
latent_size = 8
[memory]
epochs = 1
batch_size = 4
hidden_size = 16
num_mixtures = 2
[loop]
iterations = 1
agent_episodes = 1
repair_episodes = 1
select_episodes = 2
[cmaes]
population = 4
generations = 2
[dream]
trials = 2
steps = 5
start_states = 16
[checks]
every = 2
episodes = 1
max_steps = 10
"""


def test_a_point_runs_each_stage_once_goes_on_after_a_stop_and_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "keyboard-1"
    args = person_curve.Args(out=str(out), driver="keyboard", episodes=1, seed=3, tracks=1, config=str(config))
    result = person_curve.main(args)
    point = json.loads((out / person_curve.POINT_FILE).read_text())
    assert list(point["seconds"]) == list(person_curve.STAGES) and "started" not in point
    assert "--record.driver keyboard --record.episodes 1 --seed 3" in point["commands"]["record"]
    assert result["row"]["episodes"] == 1 and result["row"]["driver"] == "keyboard"
    assert result["row"]["minutes_driven"] == pytest.approx(40 / 50 / 60)  # one keyboard episode of 40 steps
    assert (out / person_curve.EVALUATION_FILE).is_file() and result["row"]["tracks"] == 1

    # stopped during the simulator: a rerun drives only the simulator again, nothing before it
    before = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("*.pth")}
    del point["seconds"]["simulator"]
    point["started"] = "simulator"
    (out / person_curve.POINT_FILE).write_text(json.dumps(point))
    person_curve.main(args)
    assert {p: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("*.pth")} == before
    assert "simulator" in json.loads((out / person_curve.POINT_FILE).read_text())["seconds"]

    # the same folder for another point is refused; the plot reads the points back
    with pytest.raises(UsageError, match="choose another --out"):
        person_curve.main(person_curve.Args(out=str(out), driver="keyboard", episodes=2, tracks=1,
                                            config=str(config)))
    png = tmp_path / "curve.png"
    rows = person_curve.main(person_curve.Args(plot=(str(out),), png=str(png)))["rows"]
    assert png.stat().st_size > 0 and rows[0]["mean"] == result["row"]["mean"]
    assert "| keyboard | 1 | 0.0 |" in person_curve.table(rows)
    with pytest.raises(UsageError, match="no curve point here"):
        person_curve.main(person_curve.Args(plot=(str(tmp_path),), png=str(png)))
