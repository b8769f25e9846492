"""bench/person_curve.py (issue 35's curve): a point runs the user's path stage by stage as subprocesses, times each,
goes on after an interruption without redoing a finished stage, and the plot reads the points back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import lineages, person_curve
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

    # the same folder as a lineage (issue 34's table): its seed and real env steps (one CMA-ES pass: no loop record)
    report = lineages.main(lineages.Args(runs=(str(out),), json_out=str(tmp_path / "lineages.json")))
    row = report["rows"][0]
    steps = row["real_env_steps"]
    assert row["seed"] == 3 and row["mean"] == result["row"]["mean"] and len(row["returns"]) == 1
    assert steps["recording"] == 80 and steps["checks"] > 0  # 1 keyboard + 1 random episode × 40 steps
    assert steps["total"] == sum(steps[use] for use in lineages.STEP_USES) and row["selection_mean"] is None
    assert "not met" in report["verdict"] and json.loads((tmp_path / "lineages.json").read_text())[0]["seed"] == 3
    with pytest.raises(UsageError, match="--runs"):
        lineages.main(lineages.Args())


def test_lineage_steps_come_from_the_loops_record_when_the_loop_made_c():
    loop_steps = {"recording": 80_000, "loop_data": 40_000, "checks": 72_000, "selection": 32_000, "total": 224_000}
    steps = lineages.real_env_steps(80, {"loop": {"real_env_steps": loop_steps}})  # the loop's count, not 80
    assert steps == loop_steps
